"""The servers' lifecycle rules as the services apply them, over the fake hypervisor: real
SQLite, real drive files, VMs in memory (fast). The same rules on QEMU are the integration
tests' (test_servers_api.py, test_server_paused.py, test_daemon_restart.py)."""

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openhosting.errors import BusyError, FailedError, MissingError
from openhosting.hypervisor.driver import PauseReason, StartRequest, VmEnd, VmStatus
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.hypervisor.spec import VmSpec
from openhosting.services.operations import START
from openhosting.services.platform import Platform
from tests.services.fake_platform import fake_platform

SERVER = {"name": "s", "cpu": "500", "mem": "64"}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


async def new_server(platform: Platform, user: str, persistent: bool) -> tuple[str, str]:
    """A started server with a drive of its own: (server, drive)."""
    drive = await platform.drives.create(user, {"name": "d", "size": str(1 << 20)})
    properties = {**SERVER, "ide:0:0": str(drive["drive"])}
    if persistent:
        properties["persistent"] = "true"
    info = await platform.servers.create(user, properties, start=True)
    return str(info["server"]), str(drive["drive"])


def claimed_by(platform: Platform, user: str, drive: str) -> object:
    """Who holds the drive (`USER:guest:SERVER:SLOT`), None when it is free."""
    return platform.drives.info(user, drive).get("claimed")


async def status(platform: Platform, user: str, server: str) -> object:
    return (await platform.servers.info(user, server))["status"]


async def test_a_persistent_server_is_dead_after_a_crash_and_stopped_after_a_power_off(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    server, drive = await new_server(platform, user, persistent=True)
    assert await status(platform, user, server) == "active"
    assert claimed_by(platform, user, drive) == f"{user}:guest:{server}:ide:0:0"

    await hypervisor.crash(server)
    assert await status(platform, user, server) == "dead"
    assert claimed_by(platform, user, drive) is None  # released

    await platform.servers.start(user, server)
    await hypervisor.guest_power_off(server)
    assert await status(platform, user, server) == "stopped"
    assert claimed_by(platform, user, drive) is None


async def test_a_server_that_is_not_persistent_is_gone_with_its_vm(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    server, drive = await new_server(platform, user, persistent=False)
    await platform.servers.shutdown(user, server)  # the guest powers off in its own time
    await hypervisor.settle()
    with pytest.raises(MissingError):
        await platform.servers.info(user, server)
    assert claimed_by(platform, user, drive) is None


async def test_a_vm_the_hypervisor_paused_is_paused_and_a_start_resumes_it(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    server, _ = await new_server(platform, user, persistent=True)
    await hypervisor.pause(server, PauseReason.NOSPACE)
    assert await status(platform, user, server) == "paused"
    await platform.servers.start(user, server)
    assert await status(platform, user, server) == "active"
    with pytest.raises(BusyError):
        await platform.servers.start(user, server)  # running: already active


async def test_a_start_the_hypervisor_fails_leaves_the_server_stopped_and_its_drives_free(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    server, drive = await new_server(platform, user, persistent=True)
    await platform.servers.stop(user, server)
    hypervisor.fail_next_start()
    with pytest.raises(FailedError):
        await platform.servers.start(user, server)
    assert await status(platform, user, server) == "stopped"
    assert claimed_by(platform, user, drive) is None
    assert hypervisor.held() == []
    # A create that cannot start leaves nothing behind.
    hypervisor.fail_next_start()
    with pytest.raises(FailedError):
        await platform.servers.create(user, SERVER, start=True)
    assert [row["server"] for row in platform.servers.list_rows(user)] == [server]


async def test_after_a_daemon_restart_running_vms_are_adopted_and_the_others_reconciled(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    runs, crashes, stuck = [(await new_server(platform, user, persistent=True)) for _ in "abc"]
    await platform.servers.close()  # the daemon stops; the VMs run on
    assert hypervisor.held() == []
    # While no daemon runs: one VM dies, one's monitor stops answering, and a VM no server
    # owns is left by a start that was never answered.
    del hypervisor.host.vms[crashes[0]]
    hypervisor.host.ended[crashes[0]] = VmEnd.CRASH
    hypervisor.host.vms[stuck[0]].stuck = True
    orphan = str(uuid.uuid4())
    await hypervisor.start(StartRequest(VmSpec(orphan, 1, 64, hypervisor.run_dir(orphan))))
    await hypervisor.detach_all()

    await platform.servers.recover()
    assert await status(platform, user, runs[0]) == "active"
    assert claimed_by(platform, user, runs[1]) is not None
    assert await status(platform, user, crashes[0]) == "dead"
    # One that cannot be controlled is stopped, not left running unseen.
    assert await status(platform, user, stuck[0]) == "stopped"
    for _, drive in (crashes, stuck):
        assert claimed_by(platform, user, drive) is None
    assert sorted(hypervisor.host.vms) == [runs[0]] == hypervisor.held()


@dataclass
class StartUnderWay:
    """A stopped persistent server's start, held in the fake's start (a slow QEMU) until
    `gate` is set, to act on the server meanwhile."""

    server: str
    drive: str
    task: asyncio.Task[None]
    gate: asyncio.Event


async def start_under_way(
    platform: Platform, hypervisor: FakeHypervisor, user: str, monkeypatch: pytest.MonkeyPatch
) -> StartUnderWay:
    server, drive = await new_server(platform, user, persistent=True)
    await platform.servers.stop(user, server)
    entered, gate = asyncio.Event(), asyncio.Event()
    start = hypervisor.start

    async def slow_start(spec: VmSpec, **options: Any) -> VmStatus:
        entered.set()
        await gate.wait()
        return await start(spec, **options)

    monkeypatch.setattr(hypervisor, "start", slow_start)
    task = asyncio.create_task(platform.servers.start(user, server))
    await entered.wait()
    return StartUnderWay(server, drive, task, gate)


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_destroy_during_a_slow_start_waits_for_it_then_destroys_the_running_server(
    fake: tuple[Platform, FakeHypervisor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, hypervisor, user = fake
    servers = platform.servers
    held = await start_under_way(platform, hypervisor, user, monkeypatch)
    server, drive, starting = held.server, held.drive, held.task
    destroying = asyncio.create_task(servers.destroy(user, server))
    starting_again = asyncio.create_task(servers.start(user, server))
    await settle_loop()
    # Ordered, not refused: both wait for the start, which has claimed the drive already.
    assert not destroying.done() and not starting_again.done()
    assert servers.operations.in_flight(server) == {START: 1}
    assert servers.operations.waiting(server) == 2
    assert claimed_by(platform, user, drive) == f"{user}:guest:{server}:ide:0:0"

    held.gate.set()
    await asyncio.wait_for(starting, 5)
    await asyncio.wait_for(destroying, 5)  # it found the server active: stopped, then gone
    with pytest.raises(MissingError, match=f"^Server {server} could not be found$"):
        await asyncio.wait_for(starting_again, 5)  # its turn came after the destroy
    with pytest.raises(MissingError):
        await servers.info(user, server)
    assert hypervisor.held() == [] and server not in hypervisor.host.vms
    assert claimed_by(platform, user, drive) is None
    assert len(servers.operations) == 0


async def test_a_cancelled_start_leaves_no_operation_vm_or_claim_behind(
    fake: tuple[Platform, FakeHypervisor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, hypervisor, user = fake
    servers = platform.servers
    held = await start_under_way(platform, hypervisor, user, monkeypatch)
    server, drive, starting = held.server, held.drive, held.task
    stopping = asyncio.create_task(servers.stop(user, server))
    await settle_loop()
    assert servers.operations.waiting(server) == 1

    starting.cancel()  # the client went away, or the daemon stops
    with pytest.raises(asyncio.CancelledError):
        await starting
    await asyncio.wait_for(stopping, 5)  # its turn came at once
    assert len(servers.operations) == 0
    assert await status(platform, user, server) == "stopped"
    assert claimed_by(platform, user, drive) is None
    assert hypervisor.held() == []
    held.gate.set()
    await servers.start(user, server)  # nothing left in the way
    assert await status(platform, user, server) == "active"
    assert len(servers.operations) == 0
