"""A real daemon under concurrent load ends with as many open file descriptors as it began
to serve with (the load campaign's invariant, bench/reliability/load.py): big infos built in
worker threads while the loop writes must not leave SQLite connections, or the descriptors
SQLite keeps of closed ones, behind."""

import contextlib
import os
import random
import threading
import time
import uuid as uuid_module
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import insert

from openhosting.model.server import ServerConfig
from openhosting.services.off_loop import INLINE_ITEMS
from openhosting.store.database import open_engine
from openhosting.store.records import encode_server_config
from openhosting.store.tables import servers
from testbed.daemon_process import Api, DaemonProcess, create_user

CLIENTS = 8
SECONDS = 5.0
SERVERS = INLINE_ITEMS + 16  # servers/info is built in a worker thread
DRIVES = INLINE_ITEMS + 16  # and so is drives/info
SETTLE_SECONDS = 10.0


def open_files(pid: int) -> list[str]:
    """What each of the process's descriptors names (sockets as `socket:[inode]`)."""
    named = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while listed
            named.append(os.readlink(fd))
    return sorted(named)


def settled_files(pid: int) -> list[str]:
    """The descriptors once the connections the clients closed are gone (two equal looks
    half a second apart, or the last look after SETTLE_SECONDS)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    files = open_files(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (again := open_files(pid)) == files:
            break
        files = again
    return files


def _add_stopped_servers(state: Path, user: str) -> None:
    # Rows straight into the database before the daemon starts: quicker than the API.
    engine = open_engine(state / "openhosting.sqlite")
    properties = {"name": "s", "cpu": "500", "mem": "64"}
    config = encode_server_config(ServerConfig.from_properties(properties))
    now = time.time()
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(servers),
                [
                    {"uuid": str(uuid_module.uuid4()), "user": user, "status": "stopped",
                     "created_at": now + index / 1e6, "config": config}
                    for index in range(SERVERS)
                ],
            )  # fmt: skip
    finally:
        engine.dispose()


def _create_drive(api: Api) -> str:
    return api.properties("/drives/create", b"name d\nsize 64k\nencryption:cipher none")["drive"]


def test_descriptors_after_a_load_are_those_before(tmp_path: Path) -> None:
    state = tmp_path / "state"
    account = create_user(state)
    _add_stopped_servers(state, account.user)
    daemon = DaemonProcess(
        state, tmp_path / "daemon.log", env={"OH_HYPERVISOR_RUN_DIR": str(tmp_path / "run")}
    )
    try:
        api = Api(account, daemon.url)
        with ThreadPoolExecutor(CLIENTS) as pool:
            drives = list(pool.map(lambda _: _create_drive(api), range(DRIVES)))
        before = settled_files(daemon.pid)
        deadline = time.monotonic() + SECONDS
        failures: list[str] = []

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                drive = rng.choice(drives)
                path, body = rng.choice(
                    [
                        ("/drives/info", None),
                        ("/servers/info", None),
                        (f"/drives/{drive}/info", None),
                        (f"/drives/{drive}/read/0/4096", None),
                        (f"/drives/{drive}/write/4096", bytes(4096)),
                        (f"/drives/{drive}/set", b"name renamed"),
                    ]
                )
                status = api.call(path, body).status
                if status not in (200, 204):
                    failures.append(f"{path}: {status}")

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 60)
        assert not failures, failures[:5]
        after = settled_files(daemon.pid)
        assert (Counter(after) - Counter(before), len(after)) == ({}, len(before))
    finally:
        daemon.stop()
