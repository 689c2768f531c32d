"""Many running servers, on the fake hypervisor (real SQLite and drive files): `servers/info`
and the periodic fold of their guests' I/O ask their monitors at once, so monitors slow to
answer delay them by the slowest one's wait, not by the sum of them."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor.driver import BlockStats
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from openhosting.services.servers import server_lifecycle
from tests.services.fake_platform import fake_platform

SERVERS = 6
SLOW = 0.4  # seconds each monitor takes to fail to answer


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


async def running_servers(platform: Platform, user: str) -> list[tuple[str, str]]:
    """SERVERS started servers, each with a drive of its own: (server, drive) each."""
    servers = []
    for index in range(SERVERS):
        drive = await platform.drives.create(user, {"name": f"d{index}", "size": str(1 << 20)})
        properties = {"name": f"s{index}", "cpu": "500", "mem": "64", "ide:0:0": drive["drive"]}
        info = await platform.servers.create(user, properties, start=True)
        servers.append((str(info["server"]), str(drive["drive"])))
    return servers


async def test_slow_monitors_delay_the_list_by_the_slowest_not_by_their_sum(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    servers = [server for server, _ in await running_servers(platform, user)]
    hypervisor.qmp_timeout = SLOW
    for server in servers:
        hypervisor.stick(server)

    began = time.monotonic()
    infos = await platform.servers.info_all(user)
    elapsed = time.monotonic() - began

    # One after another it took SERVERS × SLOW (2.4 s).
    assert elapsed < SERVERS * SLOW / 2
    assert [info["server"] for info in infos] == servers  # in the same order as before
    assert {info["status"] for info in infos} == {"active"}
    # A monitor that did not answer leaves its counters at zero, as before.
    assert {info["ide:0:0:read:bytes"] for info in infos} == {0}


async def test_stuck_monitors_hold_the_guest_io_fold_for_one_wait_not_one_each(
    fake: tuple[Platform, FakeHypervisor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, hypervisor, user = fake
    monkeypatch.setattr(server_lifecycle, "GUEST_IO_QUERY_SECONDS", SLOW)
    servers = await running_servers(platform, user)
    hypervisor.qmp_timeout = 3600  # monitors that never answer
    (answering, drive), *stuck = servers
    for server, _ in stuck:
        hypervisor.stick(server)
    hypervisor.vm(answering).blockstats = {"ide:0:0": BlockStats(4096, 2, 512, 1)}

    began = time.monotonic()
    await platform.servers.lifecycle.fold_guest_io()
    elapsed = time.monotonic() - began

    # One after another it took (SERVERS - 1) × SLOW (2 s).
    assert elapsed < (SERVERS - 1) * SLOW / 2
    info = platform.drives.info(user, drive)
    assert (info["read:bytes"], info["write:bytes"]) == (4096, 512)  # the answering one counted


async def test_servers_without_a_vm_are_listed_without_a_task_each(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    # A task per server cost more than a stopped server's info (servers/info of three
    # stopped servers answered 0.18× a hello world's requests per second): only the running
    # ones' monitors are asked, at once.
    platform, _, user = fake
    servers = [server for server, _ in await running_servers(platform, user)]
    properties = {"name": "s", "cpu": "500", "mem": "64"}
    for _ in range(3):
        servers.append(str((await platform.servers.create(user, properties, False))["server"]))
    tasks = []

    def counting_factory(  # type: ignore[no-untyped-def]
        loop: asyncio.AbstractEventLoop, coro, **options
    ) -> asyncio.Task[object]:
        task = asyncio.Task(coro, loop=loop, **options)
        tasks.append(task)
        return task

    loop = asyncio.get_running_loop()
    loop.set_task_factory(counting_factory)
    try:
        infos = await platform.servers.info_all(user)
    finally:
        loop.set_task_factory(None)
    assert [info["server"] for info in infos] == servers  # in order
    assert [info["status"] for info in infos] == ["active"] * SERVERS + ["stopped"] * 3
    assert len(tasks) == SERVERS  # the running servers' live figures, asked at once
