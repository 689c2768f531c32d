"""The daemon as the README starts it: `make run`, a user from the admin tool, curl."""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

ADMIN = str(REPO / ".venv" / "bin" / "openhosting-admin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Daemon:
    """`make run` in a process group of its own, stopped with SIGTERM like an operator would."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir, self.port = state_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = state_dir.parent / f"daemon-{port}.log"
        args = f"--state-dir {state_dir} --listen 127.0.0.1:{port}"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "run", f"ARGS={args}"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("daemon did not start listening in 60 s")

    def stop(self) -> str:
        os.killpg(self.process.pid, signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return out.decode()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def test_readme_start_prints_exports_and_serves_a_user_made_with_the_admin_tool(
    state_dir: Path,
) -> None:
    daemon = Daemon(state_dir, free_port())
    try:
        created = subprocess.run(
            [ADMIN, "--state-dir", str(state_dir), "user", "create", "--name", "bob"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        fields = dict(line.split(" ", 1) for line in created.splitlines())
        assert len(fields["secret"]) >= 22  # ≥ 128 bits in URL-safe base64
        good = curl("-u", f"{fields['user']}:{fields['secret']}", f"{daemon.url}/nosuch/command")
        assert "X-Elastic-Error: missing" in good.stdout
        bad = curl("-u", f"{fields['user']}:wrong", f"{daemon.url}/drives/list")
        assert " 401 " in bad.stdout.splitlines()[0]
        assert "X-Elastic-Error: auth" in bad.stdout
    finally:
        first_output = daemon.stop()
    exports = [line for line in first_output.splitlines() if line.startswith("export ")]
    assert exports[0] == f"export OHURI={daemon.url}/"
    assert exports[1].startswith("export OHAUTH=")
    log = daemon.log.read_text()
    assert "event=listening" in log and "event=stopped" in log
    assert fields["secret"] not in log
    first_user_secret = exports[1].split(":", 1)[1]
    assert first_user_secret not in log

    # A restart keeps every user and creates no other first user.
    daemon = Daemon(state_dir, free_port())
    try:
        first_uuid = exports[1].removeprefix("export OHAUTH=").split(":")[0]
        again = curl("-u", f"{first_uuid}:{first_user_secret}", f"{daemon.url}/nosuch/command")
        assert "X-Elastic-Error: missing" in again.stdout
    finally:
        assert "export" not in daemon.stop()
