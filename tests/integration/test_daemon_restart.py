"""VMs outlive the daemon (README.md, "Operating"): a real `openhostingd` is stopped with
SIGTERM or killed with SIGKILL while servers run; the next daemon adopts the VMs that still
run and reconciles those that ended while no daemon watched (docs/api.md §5's stop rules)."""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from openhosting.hypervisor import process
from openhosting.network import passt
from openhosting.network.passt import PasstFiles
from testbed.daemon_process import Api, DaemonProcess, create_user

TIMEOUT = 30


class ServerApi(Api):
    """The requests of this test, in its words."""

    def info(self, server: str) -> dict[str, str]:
        return self.properties(f"/servers/{server}/info")

    def wait_info(self, server: str, until: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        return self.wait_properties(f"/servers/{server}/info", until, TIMEOUT)


def qemu_pid(run_dir: Path, server: str) -> int:
    pid = process.adopt(run_dir / server, server)
    assert pid is not None, f"no running QEMU for {server}"
    return pid


def wait_gone(pid: int, server: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while process.is_vm_process(pid, server):
        assert time.monotonic() < deadline, f"QEMU {pid} still runs"
        time.sleep(0.05)


def test_vms_outlive_the_daemon_and_the_next_one_reconciles_what_happened_meanwhile(
    tmp_path: Path,
    run_dir: Path,
    daemons: list[DaemonProcess],
    daemon_env: dict[str, str],
    tiny_guest_image: Path,
) -> None:
    state = tmp_path / "state"
    log = state.parent / "daemon.log"
    api = ServerApi(create_user(state, timeout=TIMEOUT))
    env = daemon_env

    def start_daemon() -> None:
        # Each on a port of its own; the log at its default level: it is read for events.
        daemons.append(DaemonProcess(state, log, env=env, log_level=None))
        api.url = daemons[-1].url

    start_daemon()
    image = tiny_guest_image.read_bytes()
    drive = api.properties(
        "/drives/create", f"size {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{drive}/write", image)[0] == 204
    # Only the first boots a guest: the others need no drive to be a running VM.
    bodies = {
        "kept": f"name kept\ncpu 1000\nmem 256\npersistent true\nide:0:0 {drive}\nboot ide:0:0"
        "\nnic:0:model e1000",
        "crashed": "name crashed\ncpu 500\nmem 32\npersistent true\nnic:0:model e1000",
        "ended": "name ended\ncpu 500\nmem 32\npersistent true",
        "temporary": "name temporary\ncpu 500\nmem 32\npersistent false",
    }
    servers = {
        name: api.properties("/servers/create", body.encode())["server"]
        for name, body in bodies.items()
    }
    kept = servers["kept"]
    before = api.wait_info(kept, lambda info: int(info["ide:0:0:read:bytes"]) > 0)
    pids = {name: qemu_pid(run_dir, server) for name, server in servers.items()}
    # A user-mode NIC has a passt of its own, which lives and dies with its VM.
    nets = {name: PasstFiles(run_dir / "network" / "passt", servers[name], 0)
            for name in ("kept", "crashed")}  # fmt: skip
    net_pids = {name: passt.adopt(files) for name, files in nets.items()}
    assert None not in net_pids.values()

    # SIGTERM: the daemon lets go of its VMs without stopping them; the next one adopts them.
    daemons[-1].end(signal.SIGTERM)
    for name, server in servers.items():
        assert process.is_vm_process(pids[name], server), f"{name} did not survive SIGTERM"
    start_daemon()
    for server in servers.values():
        assert api.info(server)["status"] == "active"

    # SIGKILL: the daemon dies holding every QMP connection. While no daemon runs, one VM
    # crashes, one exits cleanly (QEMU's SIGTERM: a shutdown), one non-persistent crashes.
    daemons[-1].end(signal.SIGKILL)
    os.kill(pids["crashed"], signal.SIGKILL)
    os.kill(pids["ended"], signal.SIGTERM)
    os.kill(pids["temporary"], signal.SIGKILL)
    for name in ("crashed", "ended", "temporary"):
        wait_gone(pids[name], servers[name])
    start_daemon()

    after = api.info(kept)
    assert after["status"] == "active"
    assert qemu_pid(run_dir, kept) == pids["kept"]
    assert passt.adopt(nets["kept"]) == net_pids["kept"]
    assert passt.adopt(nets["crashed"]) is None and not nets["crashed"].socket.exists()
    assert after["started"] == before["started"]
    # Counters come live from the adopted QEMU: cumulative since it started.
    assert int(after["ide:0:0:read:bytes"]) >= int(before["ide:0:0:read:bytes"]) > 0
    assert api.properties(f"/drives/{drive}/info")["claimed"].endswith(f":guest:{kept}:ide:0:0")
    assert api.info(servers["crashed"])["status"] == "dead"
    assert api.info(servers["ended"])["status"] == "stopped"
    assert api.call(f"/servers/{servers['temporary']}/info")[0] == 404

    # The adopted VM obeys: stop powers it off, and the persistent server is stopped.
    assert api.call(f"/servers/{kept}/stop", b" ")[0] == 204
    stopped = api.info(kept)
    assert stopped["status"] == "stopped" and "started" not in stopped
    assert not process.is_vm_process(pids["kept"], kept)
    assert passt.adopt(nets["kept"]) is None and not nets["kept"].pidfile.exists()
    assert "claimed" not in api.properties(f"/drives/{drive}/info")
    log_text = log.read_text()
    assert log_text.count("event=server_adopted") == 4 + 1  # all four, then the survivor
