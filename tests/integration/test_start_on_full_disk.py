"""A daemon started (a restart, a reboot) while its state directory's file system is full: it
opens the database on the space its reserve held and serves, so that destroys can free space;
with no reserve left it, and the admin tool, say the disk is full and exit, no traceback."""

import errno
import os
import signal
import subprocess
from pathlib import Path

from testbed.daemon_process import BIN, Api, DaemonProcess, create_user, free_port
from tests.api.tmpfs_helpers import small_tmpfs

MIB = 1 << 20
TMPFS_SIZE = 24 * MIB
TIMEOUT = 60


def fill(path: Path) -> None:
    """Write `path` until its file system has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MIB, 4096):  # then the last blocks, fewer than a MiB
            for _ in range(TMPFS_SIZE // size):  # bounded: the file system is that small
                try:
                    os.write(fd, bytes(size))
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(path).f_bavail == 0


def test_a_daemon_starts_on_a_full_state_disk_and_a_destroy_frees_space(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE) as state:
        api = Api(create_user(state, timeout=TIMEOUT))
        log = tmp_path / "daemon.log"
        daemon = DaemonProcess(state, log, log_level="info")
        try:
            api.url = daemon.url
            drive = api.properties("/drives/create", b"size 8M\n")["drive"]
            assert api.call(f"/drives/{drive}/write", os.urandom(4 * MIB)).status == 204
            assert daemon.end(signal.SIGTERM) == 0
            assert (state / "openhosting.sqlite.reserve").exists()
            assert not (state / "openhosting.sqlite-shm").exists()  # the next opens it anew

            fill(state / "filler")
            daemon.start()  # listens: before, it exited with a traceback (disk I/O error)
            assert "event=space_reserve_used" in log.read_text()
            assert drive in api.call("/drives/list").body.decode()
            assert api.call(f"/drives/{drive}/destroy", b"").status == 204
            assert os.statvfs(state).f_bavail * os.statvfs(state).f_frsize >= 4 * MIB
            assert daemon.end(signal.SIGTERM) == 0

            # Made again once there was room; here it was used up too (a restart loop on the
            # full disk): full again and no reserve to open the database with, said so, exit 1.
            (state / "openhosting.sqlite.reserve").unlink()
            fill(state / "filler-2")
            done = subprocess.run(
                [str(BIN / "openhostingd"), "--state-dir", str(state),
                 "--listen", f"127.0.0.1:{free_port()}"],
                env={**os.environ, "OH_API_METRICS_LISTEN": ""},
                capture_output=True, text=True, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            assert done.returncode == 1
            assert f"openhostingd: The file system of {state} is full" in done.stderr
            assert "Traceback" not in done.stderr
            listed = subprocess.run(
                [str(BIN / "openhosting-admin"), "--state-dir", str(state), "user", "list"],
                capture_output=True, text=True, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            assert listed.returncode == 1
            assert listed.stderr.startswith(f"openhosting-admin: The file system of {state}")

            # Space freed: it starts, and the data is all there.
            (state / "filler").unlink()
            daemon.start()
            assert api.call("/drives/list").status == 200
            assert (state / "openhosting.sqlite.reserve").exists()  # made again
        finally:
            daemon.stop()
