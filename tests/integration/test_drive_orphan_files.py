"""A drive file left without its row by a daemon killed mid-way goes once it is older than
`storage.orphan_grace_seconds`, while the next daemon runs, not only at a later start.

A destroy deletes its row, then its file; a create writes its file, then its row. A daemon
SIGKILLed between the two leaves a file no row names. When the next daemon starts at once,
that file is younger than the grace (it was written a moment ago) and is rightly kept at
start; before, nothing looked at this host's drive directory again while the daemon ran,
and the start's look took ten minutes whatever the configuration said, so the bytes
(possibly a large drive's) stayed until some later restart."""

import os
import signal
import sqlite3
import time
from pathlib import Path

from testbed.daemon_process import Api, DaemonProcess, create_user

GRACE = 3  # seconds (the default is 600)
WAIT = 15  # seconds, at most, for the file to go
SIZE = 1024 * 1024


def left_by_a_killed_destroy(
    tmp_path: Path, daemons: list[DaemonProcess], env: dict[str, str]
) -> tuple[Api, str, bytes, Path]:
    """A daemon that made two drives and was SIGKILLed as it destroyed the second: its row
    deleted, its file not. The API (for the next daemon), the drive kept, its bytes, and the
    file left."""
    state = tmp_path / "state"
    api = Api(create_user(state))
    daemons.append(DaemonProcess(state, tmp_path / "daemon.log", env=env))
    api.url = daemons[-1].url
    kept, destroyed = (
        api.properties("/drives/create", f"size {SIZE}\nencryption:cipher none".encode())["drive"]
        for _ in "ab"
    )
    data = bytes(range(256)) * (SIZE // 256)
    for drive in (kept, destroyed):
        assert api.call(f"/drives/{drive}/write", data).status == 204
    daemons[-1].end(signal.SIGKILL)
    # Where the kill landed: the destroy's row delete committed, its unlink not done.
    with sqlite3.connect(state / "openhosting.sqlite") as database:
        database.execute("DELETE FROM drives WHERE uuid = ?", (destroyed,))
    database.close()
    left = state / "drives" / f"{destroyed}.img"
    assert left.exists()
    return api, kept, data, left


def restart(tmp_path: Path, daemons: list[DaemonProcess], env: dict[str, str], api: Api) -> None:
    daemons.append(DaemonProcess(tmp_path / "state", tmp_path / "daemon.log", env=env))
    api.url = daemons[-1].url


def assert_only_the_orphan_went(tmp_path: Path, api: Api, kept: str, data: bytes) -> None:
    assert api.call(f"/drives/{kept}/read").body == data
    assert "event=drive_file_orphan_removed" in (tmp_path / "daemon.log").read_text()


def test_a_file_a_killed_destroy_left_goes_after_the_grace_while_the_next_daemon_runs(
    tmp_path: Path, daemons: list[DaemonProcess], daemon_env: dict[str, str]
) -> None:
    env = {
        **daemon_env,
        "OH_STORAGE_ORPHAN_GRACE_SECONDS": str(GRACE),
        "OH_STORAGE_ORPHAN_CHECK_SECONDS": "1",
    }
    api, kept, data, left = left_by_a_killed_destroy(tmp_path, daemons, env)
    os.utime(left)  # written a moment ago: the start keeps it (a create's file looks so)
    touched = time.monotonic()
    restart(tmp_path, daemons, env, api)
    if time.monotonic() - touched < GRACE:  # a slow start may have passed the grace already
        assert left.exists()
    deadline = time.monotonic() + WAIT
    while left.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left.exists(), f"{left.name} still there {WAIT} s after the restart"
    assert_only_the_orphan_went(tmp_path, api, kept, data)


def test_the_start_removes_a_file_older_than_the_configured_grace(
    tmp_path: Path, daemons: list[DaemonProcess], daemon_env: dict[str, str]
) -> None:
    env = {**daemon_env, "OH_STORAGE_ORPHAN_GRACE_SECONDS": str(GRACE)}  # checks hourly
    api, kept, data, left = left_by_a_killed_destroy(tmp_path, daemons, env)
    time.sleep(GRACE + 0.5)
    restart(tmp_path, daemons, env, api)
    assert not left.exists()  # the start's repair, before the daemon listens
    assert_only_the_orphan_went(tmp_path, api, kept, data)
