"""Live migration between two QEMU drivers on this machine (two run directories standing for
two hosts of one cluster CA), real QEMU under TCG running the tiny guest: its drive is
mirrored over NBD, its memory sent over a unix socket, both over TLS (hypervisor/migration.py).
Then the same through two real `openhosting-agent` processes on loopback: the calls over the
agents' mutual TLS, the streams over TCP between the agents' migration addresses.

One boot per test (a boot costs ~10 s here): a migration there, then one back that fails
half-way because its target is killed. At most two QEMU at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting import pidwait
from openhosting.agent.pki import control_context
from openhosting.config import HypervisorSettings
from openhosting.hypervisor import process
from openhosting.hypervisor.driver import (
    HypervisorDriver,
    IncomingInfo,
    IncomingRequest,
    StartRequest,
    VmEvent,
    VmState,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import MigrationTls, live_migrate, write_qemu_tls_dir
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from testbed.agent_process import agent_process, make_cluster
from testbed.build_guest import BOOT_MARKER, READY_MARKER
from testbed.serial_console import SerialConsole, read_serial_log, wait_for_log

BOOT_TIMEOUT = 60.0
MIGRATION_TIMEOUT = 30.0
TICK = "OH-TICK"
DATA = "OH-MIGRATED-DATA-0123456789"
DATA_SECTOR = 4  # in the gap before the partition (at sector 2048): the guest reads it never


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-mig-") as name:
        yield Path(name)


@pytest.fixture
async def hosts(workdir: Path) -> AsyncIterator[tuple[QemuDriver, QemuDriver, list[VmEvent]]]:
    """Two drivers, `a` and `b`, migrating over TLS with their cluster certificates, and the
    events both sent; their VMs are killed at the end."""
    settings = HypervisorSettings(accelerator="tcg", run_as="", stop_timeout=5)
    events: list[VmEvent] = []

    async def record(event: VmEvent) -> None:
        events.append(event)

    cluster = make_cluster(workdir)
    drivers = []
    for name in "ab":
        bundle, tls_dir = cluster.host(f"hv-{name}"), workdir / f"tls-{name}"
        write_qemu_tls_dir(bundle.ca_cert, bundle.cert, bundle.key, tls_dir)
        tls = MigrationTls(tls_dir, f"hv-{name}")
        driver = QemuDriver(settings, workdir / name, workdir / f"state-{name}", migration_tls=tls)
        driver.listen(record)
        drivers.append(driver)
    yield drivers[0], drivers[1], events
    for driver in drivers:
        for server in driver.held():
            await driver.kill(server)
        for server in await driver.unheld():  # a target never finished, too
            await driver.stop_unheld(server)
        await driver.detach_all()


def ticks(log: str) -> list[int]:
    return [int(number) for number in re.findall(rf"{TICK} (\d+)", log)]


async def wait_for_tick_after(log: Path, last: int, timeout: float = 20.0) -> int:
    for _ in range(int(timeout / 0.2)):
        if (found := ticks(read_serial_log(log))) and found[-1] > last:
            return found[-1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {TICK} past {last} in {log}:\n{read_serial_log(log)}")


def incoming(spec: VmSpec, target: HypervisorDriver, drive: Path) -> IncomingRequest:
    """The request for `spec` on `target`, its one drive at `drive` there."""
    size = spec.disks[0].path.stat().st_size
    moved = dataclasses.replace(
        spec,
        run_dir=target.run_dir(spec.uuid),
        disks=(dataclasses.replace(spec.disks[0], path=drive),),
        incoming=True,
    )
    start = StartRequest(moved, timeout=MIGRATION_TIMEOUT)
    return IncomingRequest(start, ((moved.disks[0].slot, size),))


async def kill_when_mirroring(source: QemuDriver, target: QemuDriver, server: str) -> None:
    """Kill the target's QEMU as soon as the source copies a drive to it (half-way)."""
    monitor = source.vm(server).monitor
    jobs: object = []
    for _ in range(2000):
        if jobs := await monitor.execute("query-block-jobs"):
            break
        await asyncio.sleep(0.005)
    # Held to a crawl, so the kill lands while the drive is being copied however quick its
    # copy is (its zeros cross as holes: the tiny guest's 25 MiB are 10 MiB of data).
    assert isinstance(jobs, list)
    for job in jobs:
        await monitor.execute("block-job-set-speed", {"device": job["device"], "speed": 1 << 20})
    pid = process.adopt(target.run_dir(server), server)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_a_running_guest_moves_with_its_drive_and_a_failed_move_leaves_it_running(
    tiny_guest_image: Path, workdir: Path, hosts: tuple[QemuDriver, QemuDriver, list[VmEvent]]
) -> None:
    a, b, events = hosts
    drive_a = workdir / "a.raw"
    shutil.copyfile(tiny_guest_image, drive_a)
    server = str(uuid.uuid4())
    spec = VmSpec(
        uuid=server, smp=1, mem_mb=128, run_dir=a.run_dir(server), accelerator="tcg",
        disks=(DiskSpec("ide:0:0", drive_a),), boot=("ide:0:0",),
    )  # fmt: skip
    await a.start(StartRequest(spec))
    source_pid = a.vm(server).pid
    await wait_for_log(spec.paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)
    console = await SerialConsole.open(spec.paths.console_socket)
    try:
        # Something the guest wrote, then a counter that goes on while the VM moves.
        await console.run(
            f"echo {DATA} | dd of=/dev/sda bs=512 seek={DATA_SECTOR} conv=notrunc; sync"
        )
        await console.send(
            f'(i=0; while true; do echo "{TICK} $i" > /dev/ttyS0; i=$((i+1)); sleep 0.2; done) &'
        )
    finally:
        await console.close()
    before = await wait_for_tick_after(spec.paths.serial_log, 2)

    drive_b = workdir / "b.raw"
    status = await live_migrate(a, b, incoming(spec, b, drive_b), MIGRATION_TIMEOUT)

    assert (status.server, status.state) == (server, VmState.RUNNING)
    assert a.held() == [] and b.held() == [server]
    assert pidwait.exited(source_pid) and not a.run_dir(server).exists()
    log_b = b.run_dir(server) / "serial.log"
    await wait_for_tick_after(log_b, before)
    assert BOOT_MARKER not in read_serial_log(log_b)  # the same boot, running on
    assert events == []  # nothing ended, nothing paused for anyone watching
    assert drive_b.stat().st_size == drive_a.stat().st_size

    # Back to `a`, its target killed while the drive is being copied: `b` runs on.
    drive_back = workdir / "back.raw"
    migrating = asyncio.create_task(
        live_migrate(b, a, incoming(spec, a, drive_back), MIGRATION_TIMEOUT)
    )
    await kill_when_mirroring(b, a, server)
    with pytest.raises(HypervisorError, match="mirror"):
        await migrating
    last = ticks(read_serial_log(log_b))[-1]
    await wait_for_tick_after(log_b, last)
    assert b.held() == [server] and b.status(server) == status
    assert not drive_back.exists() and not a.run_dir(server).exists()
    assert await a.unheld() == [] and a.held() == []
    assert events == []

    # Stopped, `b`'s copy is the drive the guest wrote on `a`, byte for byte.
    await b.stop(server)
    assert drive_b.read_bytes() == drive_a.read_bytes()
    with drive_b.open("rb") as file:
        file.seek(DATA_SECTOR * 512)
        assert file.read(len(DATA)).decode() == DATA


@pytest.fixture
async def agents(
    workdir: Path,
) -> AsyncIterator[tuple[RemoteHypervisorDriver, RemoteHypervisorDriver, list[VmEvent]]]:
    """Two real agents over QEMU, hosts `hv-a` and `hv-b` of one cluster CA, taking
    migrations on 127.0.0.1 (their hosts' address here), and the control plane's drivers
    of them with the events both sent; their VMs are killed at the end."""
    events: list[VmEvent] = []

    async def record(event: VmEvent) -> None:
        events.append(event)

    cluster = make_cluster(workdir)
    context = control_context(cluster.control)
    env = {"OH_HYPERVISOR_MIGRATION_ADDRESS": "127.0.0.1"}
    with contextlib.ExitStack() as stack:
        drivers = []
        for name in ("hv-a", "hv-b"):
            agent = stack.enter_context(
                agent_process(workdir / name, cluster.host(name), driver="qemu", env=env)
            )
            driver = RemoteHypervisorDriver(name, agent.address, context)
            await driver.connect()
            driver.listen(record)
            drivers.append(driver)
        try:
            yield drivers[0], drivers[1], events
        finally:
            for driver in drivers:
                for server in driver.held():
                    await driver.kill(server)
                for server in await driver.unheld():  # a target never finished, too
                    await driver.stop_unheld(server)
                await driver.close()


async def kill_once_written(target: HypervisorDriver, server: str, drive: Path) -> None:
    """Kill the target's QEMU as soon as the source's mirror has written to its drive."""
    for _ in range(4000):
        if drive.exists() and drive.stat().st_blocks > 0:
            break
        await asyncio.sleep(0.005)
    pid = process.adopt(target.run_dir(server), server)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_a_vm_moves_between_two_agents_over_tcp_and_tls_and_a_killed_target_leaves_it(
    workdir: Path,
    agents: tuple[RemoteHypervisorDriver, RemoteHypervisorDriver, list[VmEvent]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No guest to boot (SeaBIOS finds nothing on the drive): the guest's side of a move
    through the agents, its counter going on, is tests/cluster/test_host_drain.py's."""
    a, b, events = agents
    drive_a = workdir / "a.raw"
    drive_a.write_bytes(bytes(range(256)) * (1 << 12))  # 1 MiB of known bytes
    server = str(uuid.uuid4())
    spec = VmSpec(
        uuid=server, smp=1, mem_mb=64, run_dir=a.run_dir(server), accelerator="tcg",
        disks=(DiskSpec("ide:0:0", drive_a),), boot=("ide:0:0",),
    )  # fmt: skip
    before = await a.start(StartRequest(spec))
    source_pid = process.adopt(a.run_dir(server), server)

    answers: list[IncomingInfo] = []
    prepare = b.prepare_incoming

    async def prepare_and_keep(request: IncomingRequest) -> IncomingInfo:
        answers.append(await prepare(request))
        return answers[-1]

    monkeypatch.setattr(b, "prepare_incoming", prepare_and_keep)
    drive_b = workdir / "b.raw"
    request = dataclasses.replace(incoming(spec, b, drive_b), started=before.started)
    status = await live_migrate(a, b, request, MIGRATION_TIMEOUT)

    # Both streams went over TCP to hv-b's address, over TLS naming hv-b.
    (info,) = answers
    assert info.migration_uri.startswith("tcp:127.0.0.1:")
    assert info.nbd_address.startswith("tcp:127.0.0.1:")
    assert info.tls_hostname == "hv-b"
    assert info.drive_paths == (("ide:0:0", str(drive_b)),)
    assert (status.server, status.state, status.started) == (
        server,
        VmState.RUNNING,
        before.started,
    )
    assert a.held() == [] and b.held() == [server]
    assert source_pid is not None and pidwait.exited(source_pid)
    assert not a.run_dir(server).exists()
    assert drive_b.read_bytes() == drive_a.read_bytes()
    assert events == []

    # Back to hv-a, whose QEMU is killed once the mirror writes to it: hv-b runs it on.
    drive_back = workdir / "back.raw"
    migrating = asyncio.create_task(
        live_migrate(b, a, incoming(spec, a, drive_back), MIGRATION_TIMEOUT)
    )
    await kill_once_written(a, server, drive_back)
    with pytest.raises(HypervisorError):
        await migrating
    assert b.held() == [server] and b.status(server) == status
    assert not drive_back.exists() and not a.run_dir(server).exists()
    assert await a.unheld() == [] and a.held() == []
    assert events == []
