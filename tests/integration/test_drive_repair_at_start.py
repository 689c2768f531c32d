"""A daemon killed while a drive's file was not yet what its row says: the next daemon puts
the drive directory right before it listens."""

import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

from testbed.daemon_process import Api, DaemonProcess, create_user

SIZE = 256 * 1024
TIMEOUT = 30


def test_the_next_daemon_fits_files_to_rows_and_removes_files_without_one(
    tmp_path: Path,
) -> None:
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    api = Api(create_user(state, timeout=TIMEOUT))
    daemon = DaemonProcess(state, log)
    try:
        api.url = daemon.url
        drive = api.properties("/drives/create", f"size {SIZE}\n".encode())["drive"]
        data = os.urandom(SIZE)
        assert api.call(f"/drives/{drive}/write", data).status == 204
        daemon.end(signal.SIGKILL)

        # As if a grow was answered and the daemon killed before the file followed, and a
        # create or destroy left a file without its row.
        with sqlite3.connect(state / "openhosting.sqlite") as database:
            database.execute("UPDATE drives SET size = ? WHERE uuid = ?", (2 * SIZE, drive))
        database.close()  # the context manager commits only
        orphan = state / "drives" / f"{uuid.uuid4()}.img"
        orphan.write_bytes(b"left behind")
        long_ago = time.time() - 3600
        os.utime(orphan, (long_ago, long_ago))

        daemon.start()
        assert not orphan.exists()
        read = api.call(f"/drives/{drive}/read")
        assert read.status == 200 and read.body == data + bytes(SIZE)
        assert "event=drive_file_resized" in log.read_text()
    finally:
        daemon.stop()
