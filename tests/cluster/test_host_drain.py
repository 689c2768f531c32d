"""`openhosting-admin host drain HOST` on the real parts: an API daemon on PostgreSQL and two
real `openhosting-agent` processes over QEMU (TCG) on loopback, taking migrations on
127.0.0.1. The tiny guest, booted on hv-a through the API, writes a marker on its drive and
counts on its serial line, with a NIC (user mode: its passt on its host); drained, hv-a
holds no VM, hv-b runs the same boot on (its counter goes on, no new boot line, its NIC made
there with the same address), the server's info names hv-b with `started` unchanged, its
drive's host is hv-b and its file hv-b's agent's own (hv-a's removed). Drained back with
hv-a's incoming QEMU killed half-way, the server is reported and runs on at hv-b. Once
stopped (through hv-b) the drive holds the guest's marker.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from openhosting.hypervisor import process
from testbed.build_guest import BOOT_MARKER, READY_MARKER, build_tiny_guest
from testbed.daemon_process import BIN
from testbed.serial_console import SerialConsole, read_serial_log, wait_for_log
from tests.cluster.test_host_agents import Hosts

BOOT_TIMEOUT = 60.0
TICK = "OH-TICK"
DATA = "OH-DRAINED-DATA-0123456789"
DATA_SECTOR = 4  # in the gap before the partition: the guest never reads it


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    # The agents take migrations on their hosts' address, here loopback.
    monkeypatch.setenv("OH_HYPERVISOR_MIGRATION_ADDRESS", "127.0.0.1")
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


def ticks(log: str) -> list[int]:
    return [int(line.split()[1]) for line in log.splitlines() if line.startswith(f"{TICK} ")]


def wait_for_tick_after(log: Path, last: int, timeout: float = 20.0) -> int:
    for _ in range(int(timeout / 0.2)):
        if (found := ticks(read_serial_log(log))) and found[-1] > last:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {TICK} past {last} in {log}:\n{read_serial_log(log)}")


def kill_once_written(landing: Path, run_dir: Path, server: str) -> None:
    """Kill the QEMU taking `server` in under `run_dir` once the mirror has written to its
    drive's landing file (bounded)."""
    for _ in range(4000):
        if landing.exists() and landing.stat().st_blocks > 0:
            break
        time.sleep(0.005)
    pid = process.adopt(run_dir / server, server)
    assert pid is not None, "no QEMU takes the server in"
    os.kill(pid, signal.SIGKILL)


async def write_and_count(console_socket: Path) -> None:
    """The guest writes DATA on its drive, then prints a counter on its serial line."""
    console = await SerialConsole.open(console_socket)
    try:
        await console.run(
            f"echo {DATA} | dd of=/dev/sda bs=512 seek={DATA_SECTOR} conv=notrunc; sync"
        )
        await console.send(
            f'(i=0; while true; do echo "{TICK} $i" > /dev/ttyS0; i=$((i+1)); sleep 0.2; done) &'
        )
    finally:
        await console.close()


def test_a_drain_moves_the_running_guest_to_the_other_host_without_a_reboot(
    hosts: Hosts,
) -> None:
    # The API node's own host takes no server: the drain's only target is hv-b.
    daemon, api, log = hosts.api_over_qemu_agents("hv-a", "hv-b")

    image = build_tiny_guest().read_bytes()
    drive = api.properties(
        "/drives/create", f"name guest\nsize {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    # Placed on hv-a (hosts of equal room: the first by name), in its agent's directory.
    assert api.properties(f"/drives/{drive}/info")["host"] == "hv-a"
    file_on = {name: hosts.work / f"agent-{name}" / "state" / "drives" / f"{drive}.img"
               for name in ("hv-a", "hv-b")}  # fmt: skip
    assert api.call(f"/drives/{drive}/write", image).status == 204
    body = f"name g\ncpu 1000\nmem 128\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
    body += "nic:0:model virtio\nnic:0:dhcp auto\n"  # made on hv-a, then on hv-b
    server = api.properties("/servers/create/stopped", body.encode())["server"]
    started = api.call(f"/servers/{server}/start", b"")
    assert started.status == 204, started
    before = api.properties(f"/servers/{server}/info")
    assert before["host"] == "hv-a" and hosts.held("hv-a") == [server]
    run_a, run_b = hosts.run_dirs["hv-a"] / server, hosts.run_dirs["hv-b"] / server
    try:
        asyncio.run(wait_for_log(run_a / "serial.log", READY_MARKER, timeout=BOOT_TIMEOUT))
        asyncio.run(write_and_count(run_a / "console.sock"))
        last = wait_for_tick_after(run_a / "serial.log", 2)

        admin_env = {
            **os.environ,
            **hosts.env,
            "OH_API_METRICS_LISTEN": f"127.0.0.1:{daemon.metrics_port}",
        }
        drained = subprocess.run(
            [str(BIN / "openhosting-admin"), "--state-dir", str(hosts.state),
             "host", "drain", "hv-a"],
            capture_output=True, text=True, timeout=180, env=admin_env,
        )  # fmt: skip
        assert drained.returncode == 0, (drained.stdout, drained.stderr, log.read_text()[-3000:])
        assert drained.stdout == f"{server} moved hv-b\n"

        assert hosts.held("hv-a") == [] and hosts.held("hv-b") == [server]
        wait_for_tick_after(run_b / "serial.log", last)
        assert BOOT_MARKER not in read_serial_log(run_b / "serial.log")  # the same boot
        after = api.properties(f"/servers/{server}/info")
        assert (after["status"], after["host"]) == ("active", "hv-b")
        assert after["started"] == before["started"]
        assert after["nic:0:dhcp:ip"] == before["nic:0:dhcp:ip"]  # its NIC moved with it
        assert api.properties(f"/drives/{drive}/info")["host"] == "hv-b"
        # The drive's file is hv-b's own now; hv-a's is gone.
        assert file_on["hv-b"].is_file() and not file_on["hv-a"].exists()

        # Drained back, with hv-a's QEMU killed once the mirror writes to it: the server
        # is reported and runs on at hv-b, where it was; nothing of it is left on hv-a.
        landing = file_on["hv-a"]
        with subprocess.Popen(
            [str(BIN / "openhosting-admin"), "--state-dir", str(hosts.state),
             "host", "drain", "hv-b"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=admin_env,
        ) as back:  # fmt: skip
            kill_once_written(landing, hosts.run_dirs["hv-a"], server)
            out, err = back.communicate(timeout=180)
        # Why, on the server's line (the tool's error output, as for `host suspend`).
        assert back.returncode == 1 and f"{server} host hv-" in err, (out, err)
        assert "1 server(s) not moved, running on" in err
        wait_for_tick_after(run_b / "serial.log", ticks(read_serial_log(run_b / "serial.log"))[-1])
        assert hosts.held("hv-a") == [] and hosts.held("hv-b") == [server]
        assert not landing.exists() and not run_a.exists()
        assert api.properties(f"/servers/{server}/info")["host"] == "hv-b"
    finally:
        stopped = api.call(f"/servers/{server}/stop", b"")
    assert stopped.status == 204, stopped
    assert hosts.held("hv-b") == []
    assert not file_on["hv-a"].exists()
    with file_on["hv-b"].open("rb") as file:
        file.seek(DATA_SECTOR * 512)
        assert file.read(len(DATA)).decode() == DATA
