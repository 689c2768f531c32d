"""A serving daemon's caches (the verified Basic header, the listings) hold only while its
database shows no commit: a commit of another process, the admin tool's, is seen from the
daemon's next request (the WAL-index header, store/wal_index.py)."""

import subprocess
from pathlib import Path

from openhosting.wire.text import parse_properties
from testbed.daemon_process import Account, Api, running_daemon
from tests.conftest import REPO

ADMIN = REPO / ".venv" / "bin" / "openhosting-admin"


def _admin(state_dir: Path, *args: str) -> str:
    return subprocess.run(
        [str(ADMIN), "--state-dir", str(state_dir), *args],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


def test_the_admin_tools_commits_reach_the_daemons_next_request(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        api = Api(daemon, daemon.url)
        drive = api.properties("/drives/create", b"name d\nsize 1M")["drive"]
        for _ in range(3):  # verified once, then answered from memory
            answer = api.call("/drives/list")
            assert answer.status == 200 and answer.body.decode().split() == [drive]
        # Another process rotates the key: the old one is refused at once, the new one gets
        # in (and the listing, read again after that commit, is the same).
        secret = parse_properties(_admin(daemon.state_dir, "user", "rotate-key", daemon.user))
        assert api.call("/drives/list").status == 401
        renewed = Api(Account(daemon.user, secret["secret"]), daemon.url)
        answer = renewed.call("/drives/list")
        assert answer.status == 200 and answer.body.decode().split() == [drive]
