"""A server whose second drive is on another host, on the real parts: an API daemon on
PostgreSQL and two real `openhosting-agent` processes over QEMU (TCG) on loopback, their
exports and QEMUs on 127.0.0.1 over the cluster's TLS.

The boot drive (the tiny guest) is on hv-a; the second drive, encrypted, kept apart by
`avoid`, is on hv-b and holds a marker written through the API. The server starts on hv-a
(its boot drive's host); hv-b serves the second drive over NBD (one qemu-storage-daemon,
its file as stored: the marker is not in it in clear), and the guest reads the marker from
its second disk and writes a line of its own there. hv-b's agent SIGKILLed and started again,
the export serves on (the guest reads its line again) and the new agent lists it. The API
reads the guest's line back once the server stopped; then no qemu-storage-daemon is left on
hv-b. With hv-b's agent killed, a start is
`503 failed` naming hv-b and leaves nothing on hv-a.
"""

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from openhosting.hypervisor.nbd_exports import EXPORTS_DIRECTORY, PIDFILE, export_pid
from testbed.build_guest import READY_MARKER, build_tiny_guest
from testbed.serial_console import SerialConsole, wait_for_log
from tests.cluster.test_host_agents import Hosts, wait_for

BOOT_TIMEOUT = 60.0
MARKER = "OH-NBD-MARKER-0123456789"
FROM_GUEST = "OH-WRITTEN-BY-THE-GUEST"
GUEST_SECTOR = 8  # where the guest writes its line on the second disk


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    for binary in ("qemu-system-x86_64", "qemu-storage-daemon"):  # no skip: a platform part
        assert shutil.which(binary), f"{binary} is not installed (scripts/install-system-packages)"
    # The agents serve their drives on their hosts' cluster address, here loopback.
    monkeypatch.setenv("OH_HYPERVISOR_MIGRATION_ADDRESS", "127.0.0.1")
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


async def read_then_write(console_socket: Path) -> str:
    """What the guest reads at the start of its 1 MiB disk (the second drive; the order of
    its disks' names is the kernel's); then it writes its own line there."""
    console = await SerialConsole.open(console_socket)
    try:
        disk = await console.run(
            'for d in /sys/block/sd*; do [ "$(cat $d/size)" = 2048 ] && echo ${d##*/}; done'
        )
        assert disk.startswith("sd"), disk
        seen = await console.run(
            f"dd if=/dev/{disk} bs=512 count=1 2>/dev/null | head -c {len(MARKER)}"
        )
        await console.run(
            f"echo {FROM_GUEST} | dd of=/dev/{disk} bs=512 seek={GUEST_SECTOR} conv=notrunc"
            " 2>/dev/null; sync"
        )
        return seen
    finally:
        await console.close()


async def read_again(console_socket: Path) -> str:
    """The guest's own line, read again from its disk past its page cache."""
    console = await SerialConsole.open(console_socket)
    try:
        disk = await console.run(
            'for d in /sys/block/sd*; do [ "$(cat $d/size)" = 2048 ] && echo ${d##*/}; done'
        )
        await console.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        return await console.run(
            f"dd if=/dev/{disk} bs=512 skip={GUEST_SECTOR} count=1 2>/dev/null"
            f" | head -c {len(FROM_GUEST)}"
        )
    finally:
        await console.close()


def exports_asked(hosts: Hosts, name: str) -> list[str]:
    """The servers host `name`'s agent says it exports drives to."""
    return hosts.ask_agent(name, "exports")


def exports_on(run_dir: Path) -> list[Path]:
    """The pidfiles of the exports running under an agent's run directory."""
    found = (run_dir / EXPORTS_DIRECTORY).glob(f"*/*/{PIDFILE}")
    return [pidfile for pidfile in found if export_pid(pidfile) is not None]


def test_a_server_boots_on_its_boot_drives_host_and_reads_its_drive_of_another_host(
    hosts: Hosts,
) -> None:
    # The API node's own host takes no server: the boot drive's host, hv-a, runs it.
    _daemon, api, log = hosts.api_over_qemu_agents("hv-a", "hv-b")

    image = build_tiny_guest().read_bytes()
    boot = api.properties(
        "/drives/create", f"name boot\nsize {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{boot}/write", image).status == 204
    data = api.properties("/drives/create", f"name data\nsize 1M\navoid {boot}\n".encode())
    drive = data["drive"]
    assert data["encryption:cipher"] != "none"  # its LUKS layer is opened on hv-a
    assert api.call(f"/drives/{drive}/write", MARKER.encode()).status == 204
    placed = {api.properties(f"/drives/{uuid}/info")["host"] for uuid in (boot, drive)}
    assert placed == {"hv-a", "hv-b"}
    assert api.properties(f"/drives/{boot}/info")["host"] == "hv-a"
    data_file = hosts.work / "agent-hv-b" / "state" / "drives" / f"{drive}.img"
    assert MARKER.encode() not in data_file.read_bytes()  # ciphertext at rest, and on the wire

    body = f"name n\ncpu 1000\nmem 128\npersistent true\nide:0:0 {boot}\nide:0:1 {drive}\n"
    server = api.properties("/servers/create/stopped", f"{body}boot ide:0:0\n".encode())["server"]
    started = api.call(f"/servers/{server}/start", b"")
    assert started.status == 204, (started, log.read_text()[-3000:])
    run_a, run_b = hosts.run_dirs["hv-a"], hosts.run_dirs["hv-b"]
    try:
        assert hosts.held("hv-a") == [server] and hosts.held("hv-b") == []
        assert api.properties(f"/servers/{server}/info")["host"] == "hv-a"
        assert len(exports_on(run_b)) == 1 and exports_on(run_a) == []
        asyncio.run(wait_for_log(run_a / server / "serial.log", READY_MARKER, timeout=BOOT_TIMEOUT))
        seen = asyncio.run(read_then_write(run_a / server / "console.sock"))
        assert seen == MARKER

        # hv-b's agent SIGKILLed and started again: the export served on meanwhile (its
        # daemon is not the agent's child), and the new agent finds it by its pidfile.
        hv_b = hosts.agents["hv-b"]
        os.kill(hv_b.pid, signal.SIGKILL)
        hosts.start_agent("hv-b", listen=hv_b.address, driver="qemu")
        assert exports_asked(hosts, "hv-b") == [server]
        assert asyncio.run(read_again(run_a / server / "console.sock")) == FROM_GUEST
    finally:
        stopped = api.call(f"/servers/{server}/stop", b"")
    assert stopped.status == 204, stopped
    assert hosts.held("hv-a") == [] and exports_on(run_b) == []
    assert not (run_b / EXPORTS_DIRECTORY / server).exists()
    # What the guest wrote over NBD is in the drive, read back through the API.
    written = api.call(f"/drives/{drive}/read/{GUEST_SECTOR * 512}/{len(FROM_GUEST)}")
    assert written.body.decode() == FROM_GUEST

    # hv-b's agent gone: the server cannot start without its drive there; nothing is left.
    os.kill(hosts.agents["hv-b"].pid, signal.SIGKILL)
    wait_for(lambda: "event=host_agent_down host=hv-b" in log.read_text(), "hv-b down", log)
    refused = api.call(f"/servers/{server}/start", b"")
    assert (refused.status, refused.headers.get("X-Elastic-Error")) == (503, "failed"), refused
    assert "hv-b" in refused.body.decode()
    assert hosts.held("hv-a") == [] and exports_on(run_b) == []
    assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
