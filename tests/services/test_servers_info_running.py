"""`servers/info` over many running servers, on the fake hypervisor (real SQLite and drive
files): their monitors are asked at once, so monitors slow to answer delay the list by the
slowest one's wait, not by the sum of them."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from tests.services.fake_platform import fake_platform

SERVERS = 6
SLOW = 0.4  # seconds each monitor takes to fail to answer


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


async def test_slow_monitors_delay_the_list_by_the_slowest_not_by_their_sum(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    servers = []
    for index in range(SERVERS):
        drive = await platform.drives.create(user, {"name": f"d{index}", "size": str(1 << 20)})
        properties = {"name": f"s{index}", "cpu": "500", "mem": "64", "ide:0:0": drive["drive"]}
        info = await platform.servers.create(user, properties, start=True)
        servers.append(info["server"])
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
