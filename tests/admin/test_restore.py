"""`openhosting-admin restore DIR` on a real daemon's state: the platform comes back as the
backup had it, even where the replaced database left its write-ahead log (a daemon killed,
not stopped), and never under a running daemon."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

from testbed.daemon_process import BIN, Api, DaemonProcess, create_user

SIZE = 256 * 1024
TIMEOUT = 60


def admin(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def drive_names(api: Api) -> list[str]:
    status, _, body = api.call("/drives/list")
    assert status == 200
    return sorted(body.decode().split())


def test_a_restore_gives_back_the_backup_not_the_log_of_the_database_it_replaces(
    tmp_path: Path,
) -> None:
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    api = Api(create_user(state, timeout=TIMEOUT))
    daemon = DaemonProcess(state, log)
    try:
        api.url = daemon.url
        drive = api.properties(
            "/drives/create", f"name kept\nsize {SIZE}\nencryption:cipher aes-xts-plain\n".encode()
        )["drive"]
        backed_up = os.urandom(SIZE)
        assert api.call(f"/drives/{drive}/write", backed_up).status == 204

        backup = tmp_path / "backup"
        taken = admin(state, "backup", str(backup))
        assert taken.returncode == 0, taken.stderr
        shutil.copytree(state / "drives", tmp_path / "drives-backup")  # the operator's rsync

        # After the backup: a drive made, the encrypted one written again.
        late = api.properties("/drives/create", f"name late\nsize {SIZE}\n".encode())["drive"]
        assert api.call(f"/drives/{drive}/write", os.urandom(SIZE)).status == 204

        refused = admin(state, "restore", str(backup))
        assert refused.returncode == 1 and "stop the daemon" in refused.stderr
        assert late in drive_names(api)  # nothing was replaced under it

        # Killed, not stopped: its last commits stay in the write-ahead log beside the file.
        daemon.end(signal.SIGKILL)
        assert (state / "openhosting.sqlite-wal").stat().st_size > 0

        restored = admin(state, "restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        assert f"restored {state / 'openhosting.sqlite'}" in restored.stdout
        assert f"restored {state / 'platform.key'}" in restored.stdout
        assert "drives not restored" in restored.stdout
        assert not (state / "openhosting.sqlite-wal").exists()
        shutil.rmtree(state / "drives")
        shutil.copytree(tmp_path / "drives-backup", state / "drives")

        daemon.start()
        assert late not in drive_names(api) and drive in drive_names(api)
        # The platform key came back with the database: the same secret signs in and the
        # encrypted drive reads back what it held at the backup.
        read = api.call(f"/drives/{drive}/read")
        assert read.status == 200 and read.body == backed_up
    finally:
        daemon.stop()


def test_a_restore_from_a_directory_without_a_backup_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    create_user(state, timeout=TIMEOUT)
    before = {path.name: path.read_bytes() for path in state.iterdir() if path.is_file()}
    not_a_backup = tmp_path / "nothing"
    not_a_backup.mkdir()
    (not_a_backup / "platform.key").write_bytes(os.urandom(32))
    (not_a_backup / "openhosting.sqlite").write_bytes(b"not a database" * 100)

    answer = admin(state, "restore", str(not_a_backup))
    assert answer.returncode == 1 and "not a database to restore" in answer.stderr
    assert {path.name: path.read_bytes() for path in state.iterdir() if path.is_file()} == before

    answer = admin(state, "restore", str(tmp_path / "missing"))
    assert answer.returncode == 1 and "No backup in" in answer.stderr
