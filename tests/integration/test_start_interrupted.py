"""A daemon SIGKILLed in the middle of a start (QEMU spawned, the drives claimed, the server
not yet `active` in the database), found by the crash campaign of `make reliability`: the
next daemon stops the VM that no active server owns and releases its claims, so the drive is
free and the server starts again (before: the VM ran on unseen, the drive stayed `claimed`
and every later start was a 500 "already has a running VM")."""

import signal
import sqlite3
import time
from pathlib import Path

from openhosting.hypervisor import process
from testbed.daemon_process import Api, DaemonProcess, create_user

TIMEOUT = 30


def test_a_vm_whose_start_was_never_answered_is_stopped_and_its_claims_released(
    tmp_path: Path, run_dir: Path, daemon_env: dict[str, str]
) -> None:
    state = tmp_path / "state"
    api = Api(create_user(state, timeout=TIMEOUT))
    daemon = DaemonProcess(state, tmp_path / "daemon.log", env=daemon_env)
    try:
        api.url = daemon.url
        drive = api.properties("/drives/create", b"size 1M\nencryption:cipher none")["drive"]
        server = api.properties(
            "/servers/create/stopped", f"name s\ncpu 500\nmem 32\nide:0:0 {drive}".encode()
        )["server"]
        assert api.call(f"/servers/{server}/start", b"")[0] == 204
        pid = process.adopt(run_dir / server, server)
        assert pid is not None
        # Killed before the server was marked active: what the database then holds.
        daemon.end(signal.SIGKILL)
        with sqlite3.connect(state / "openhosting.sqlite") as database:
            database.execute(
                "UPDATE servers SET status = 'stopped', started_at = NULL WHERE uuid = ?",
                (server,),
            )
        database.close()
        daemon.start()

        deadline = time.monotonic() + TIMEOUT
        while process.is_vm_process(pid, server):
            assert time.monotonic() < deadline, f"QEMU {pid} of a stopped server still runs"
            time.sleep(0.05)
        assert "claimed" not in api.properties(f"/drives/{drive}/info")
        assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
        assert api.call(f"/servers/{server}/start", b"")[0] == 204
        assert api.call(f"/servers/{server}/destroy", b"")[0] == 204
    finally:
        daemon.stop()
