"""A migrating VM's state goes once its drive's mirror is READY and pauses before its
switch-over (`pause-before-switchover`): the mirror is completed with the guest paused, then
the devices' state goes; the daemon follows both by QMP events. A move that fails half-way
leaves the source running, with nothing of the switch-over's pause left for a later save.
A plain drive's zeros cross as zero requests and land as holes.

Real QEMU under TCG over TLS (tests/hypervisor/test_migration_tls.py's hosts): a VM without
a guest and an 8 MiB drive of data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor import process
from openhosting.hypervisor.driver import IncomingRequest, StartRequest, VmState
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import live_migrate
from openhosting.hypervisor.monitor import Monitor
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from testbed.agent_process import make_cluster
from tests.hypervisor.test_migration_tls import TIMEOUT, Hosts

pytestmark = pytest.mark.integration

DRIVE_BYTES = 8 << 20


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-mlap-") as name:
        yield Path(name)


def vm_with_data(driver: QemuDriver, workdir: Path) -> VmSpec:
    drive = workdir / "a.raw"
    drive.write_bytes(bytes(range(1, 256)) * (DRIVE_BYTES // 255) + b"\1" * (DRIVE_BYTES % 255))
    server = str(uuid.uuid4())
    return VmSpec(
        uuid=server, smp=1, mem_mb=64, run_dir=driver.run_dir(server), accelerator="tcg",
        disks=(DiskSpec("ide:0:0", drive),),
    )  # fmt: skip


def moved_to(target: QemuDriver, spec: VmSpec) -> IncomingRequest:
    disk = dataclasses.replace(spec.disks[0], path=spec.disks[0].path.with_name("b.raw"))
    moved = dataclasses.replace(
        spec, run_dir=target.run_dir(spec.uuid), disks=(disk,), incoming=True
    )
    return IncomingRequest(StartRequest(moved, timeout=TIMEOUT), ((disk.slot, DRIVE_BYTES),))


async def events_until(monitor: Monitor, done: asyncio.Future[object]) -> list[str]:
    """The source's MIGRATION statuses and mirror events, in order, until `done` (or QEMU
    hangs up: the source ends once the VM moved)."""
    seen: list[str] = []
    with monitor.listen("MIGRATION", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED") as events:
        for _ in range(int(TIMEOUT / 0.05)):  # bounded
            try:
                event = await events.next(0.05)
            except HypervisorError:  # the source's QEMU ended
                break
            if event is not None:
                seen.append(str(event.data.get("status", event.name)))
            elif done.done():
                break
    return seen


async def test_the_state_goes_once_the_mirror_is_ready_and_the_mirror_completes_paused(
    workdir: Path,
) -> None:
    hosts = Hosts(workdir)
    try:
        cluster = make_cluster(workdir)
        a, b = hosts.host("hv-a", cluster.host("hv-a")), hosts.host("hv-b", cluster.host("hv-b"))
        spec = vm_with_data(a, workdir)
        await a.start(StartRequest(spec))
        request = moved_to(b, spec)

        move = asyncio.ensure_future(live_migrate(a, b, request, TIMEOUT))
        seen = await events_until(a.vm(spec.uuid).monitor, move)
        status = await move

        # The state's stream began once the mirror was READY, paused before its switch-over,
        # and the devices' state went once the mirror had completed, the guest paused.
        assert seen == [
            "BLOCK_JOB_READY", "setup", "active", "pre-switchover", "BLOCK_JOB_COMPLETED",
            "device", "completed",
        ]  # fmt: skip
        assert (status.state, a.held(), b.held()) == (VmState.RUNNING, [], [spec.uuid])
        assert hosts.events == []
        await b.stop(spec.uuid)
        assert request.start.spec.disks[0].path.read_bytes() == spec.disks[0].path.read_bytes()
    finally:
        await hosts.close()


async def test_a_target_killed_during_the_state_leaves_the_source_running_as_before(
    workdir: Path,
) -> None:
    hosts = Hosts(workdir)
    try:
        cluster = make_cluster(workdir)
        a, b = hosts.host("hv-a", cluster.host("hv-a")), hosts.host("hv-b", cluster.host("hv-b"))
        spec = vm_with_data(a, workdir)
        before = await a.start(StartRequest(spec))
        monitor = a.vm(spec.uuid).monitor

        with monitor.listen("MIGRATION") as events:
            move = asyncio.ensure_future(live_migrate(a, b, moved_to(b, spec), TIMEOUT))
            event = await events.next(TIMEOUT)  # the state's stream sets up: kill its target
            assert event is not None and event.data.get("status") == "setup"
            pid = process.adopt(b.run_dir(spec.uuid), spec.uuid)
            assert pid is not None, "no QEMU takes the server in"
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(HypervisorError):
                await move

        assert a.held() == [spec.uuid] and a.status(spec.uuid) == before
        assert await monitor.query_status() == "running"
        # A later save of the state (suspend, `fd:`) would stop at the switch-over forever.
        capabilities = await monitor.execute("query-migrate-capabilities")
        assert isinstance(capabilities, list)
        on = {entry["capability"] for entry in capabilities if entry["state"]}
        assert "pause-before-switchover" not in on
        assert b.held() == [] and await b.unheld() == []
        assert not (workdir / "b.raw").exists()
    finally:
        await hosts.close()


async def test_a_drive_s_zeros_cross_as_zero_requests_and_land_as_holes(workdir: Path) -> None:
    hosts = Hosts(workdir)
    try:
        cluster = make_cluster(workdir)
        a, b = hosts.host("hv-a", cluster.host("hv-a")), hosts.host("hv-b", cluster.host("hv-b"))
        spec = vm_with_data(a, workdir)
        data = spec.disks[0].path.read_bytes()
        # Zeros written (allocated in the source's file), between two MiB of data.
        zeros = bytes(DRIVE_BYTES - (2 << 20))
        spec.disks[0].path.write_bytes(data[: 1 << 20] + zeros + data[: 1 << 20])
        await a.start(StartRequest(spec))
        request = moved_to(b, spec)

        await live_migrate(a, b, request, TIMEOUT)
        await b.stop(spec.uuid)

        landed = request.start.spec.disks[0].path
        assert landed.read_bytes() == spec.disks[0].path.read_bytes()
        # The two MiB of data take room; the zeros do not (st_blocks: 512-byte units).
        assert landed.stat().st_blocks * 512 <= 3 << 20 < spec.disks[0].path.stat().st_blocks * 512
    finally:
        await hosts.close()
