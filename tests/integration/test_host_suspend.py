"""Host maintenance on a real `openhostingd` and a real guest under TCG: `openhosting-admin
host suspend` saves the guest's memory to an encrypted dump and ends its QEMU, the server is
`dumped` with its drive still claimed; the dump outlives a daemon restart; `host resume` (or
`start`) brings the same guest back where it was: what it held in memory is still there and
its uptime goes on, it does not boot again. Without a daemon the tool does the same itself."""

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from openhosting.hypervisor import process
from testbed.build_guest import BOOT_MARKER, READY_MARKER
from testbed.daemon_process import BIN, Api, DaemonProcess, create_user
from testbed.serial_console import SerialConsole, read_serial_log, wait_for_log

TIMEOUT = 60
# Typed as `$((6*7))`: only the guest's memory ever holds the expanded text.
MARKER_TYPED, MARKER = "OH-IN-MEMORY-$((6*7))-X", "OH-IN-MEMORY-42-X"


async def _in_guest(console_socket: Path, *commands: str) -> list[str]:
    console = await SerialConsole.open(console_socket)
    try:
        return [await console.run(command) for command in commands]
    finally:
        await console.close()


def in_guest(console_socket: Path, *commands: str) -> list[str]:
    return asyncio.run(_in_guest(console_socket, *commands))


def uptime(console_socket: Path) -> float:
    return float(in_guest(console_socket, "cat /proc/uptime")[0].split()[0])


def admin(state: Path, env: dict[str, str], *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "host", *words],
        capture_output=True, text=True, timeout=TIMEOUT * 2, env={**os.environ, **env},
    )  # fmt: skip


def test_a_suspended_guest_runs_on_where_it_was_after_resume_and_a_daemon_restart(
    tmp_path: Path,
    run_dir: Path,
    daemons: list[DaemonProcess],
    daemon_env: dict[str, str],
    tiny_guest_image: Path,
) -> None:
    state = tmp_path / "state"
    api = Api(create_user(state, timeout=TIMEOUT), timeout=TIMEOUT)
    env = daemon_env

    def start_daemon() -> DaemonProcess:
        daemons.append(DaemonProcess(state, state.parent / "daemon.log", env=env))
        api.url = daemons[-1].url
        return daemons[-1]

    def info() -> dict[str, str]:
        return api.properties(f"/servers/{server}/info")

    daemon = start_daemon()
    # The admin tool reaches this daemon on its operator listener.
    admin_env = {**env, "OH_API_METRICS_LISTEN": f"127.0.0.1:{daemon.metrics_port}"}
    image = tiny_guest_image.read_bytes()
    drive = api.properties(
        "/drives/create", f"size {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{drive}/write", image)[0] == 204
    # Not persistent: a VM ending for any other reason would destroy this server.
    body = f"name kept\ncpu 2000\nmem 128\npersistent false\nide:0:0 {drive}\nboot ide:0:0"
    server = api.properties("/servers/create", body.encode())["server"]
    serial_log, console = run_dir / server / "serial.log", run_dir / server / "console.sock"
    asyncio.run(wait_for_log(serial_log, READY_MARKER, timeout=90))
    assert in_guest(console, f"M={MARKER_TYPED}; echo $M") == [MARKER]
    before = uptime(console)
    pid = process.adopt(run_dir / server, server)
    assert pid is not None

    # Suspend through the running daemon.
    suspended = admin(state, admin_env, "suspend")
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout == f"{server} dumped\n"
    assert info()["status"] == "dumped"
    assert not process.is_vm_process(pid, server)
    dump = state / "dumps" / f"{server}.dump"
    assert dump.stat().st_size > 0 and dump.stat().st_mode & 0o777 == 0o600
    assert MARKER.encode() not in dump.read_bytes()  # encrypted at rest
    assert api.properties(f"/drives/{drive}/info")["claimed"].endswith(f":{server}:ide:0:0")

    # The dump outlives the daemon: the next one still shows the server dumped.
    daemon.end(signal.SIGTERM)
    daemon = start_daemon()
    admin_env["OH_API_METRICS_LISTEN"] = f"127.0.0.1:{daemon.metrics_port}"
    assert info()["status"] == "dumped"

    resumed = admin(state, admin_env, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"{server} active\n"
    assert info()["status"] == "active"
    assert not dump.exists()
    assert in_guest(console, "echo $M") == [MARKER]  # the same memory, not a new boot
    after = uptime(console)
    assert after > before
    assert read_serial_log(serial_log).count(BOOT_MARKER) == 1

    # Without a daemon the tool holds the VM itself; `start` restores it too. The tool is
    # told the stopped daemon's operator address: the default one (127.0.0.1:9180) may be
    # another platform's on this machine (a `make run`), whose daemon refuses (409).
    daemon.end(signal.SIGTERM)
    suspended = admin(state, admin_env, "suspend")
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout == f"{server} dumped\n"
    assert dump.exists()
    daemon = start_daemon()
    assert info()["status"] == "dumped"
    assert api.call(f"/servers/{server}/start", b" ")[0] == 204
    assert info()["status"] == "active"
    assert in_guest(console, "echo $M") == [MARKER]
    assert uptime(console) > after
    assert read_serial_log(serial_log).count(BOOT_MARKER) == 1

    # A dumped server destroyed: its dump goes, its drive is released.
    admin_env["OH_API_METRICS_LISTEN"] = f"127.0.0.1:{daemon.metrics_port}"
    assert admin(state, admin_env, "suspend").returncode == 0
    assert dump.exists()
    assert api.call(f"/servers/{server}/destroy", b" ")[0] == 204
    assert not dump.exists()
    assert "claimed" not in api.properties(f"/drives/{drive}/info")
