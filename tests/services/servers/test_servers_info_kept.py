"""`servers/info` keeps its answer while none of the user's servers has a VM (services/
servers.py): on the fake hypervisor (real SQLite and drive files), a running server's status
and QEMU's counters are never answered from what was kept, before or after its start's
commit, and a stopped server's answer is kept again."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor.driver import BlockStats
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from tests.services.fake_platform import fake_platform


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


async def test_a_running_servers_figures_are_never_answered_from_the_kept_answer(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    servers = platform.servers
    drive = await platform.drives.create(user, {"name": "d", "size": str(1 << 20)})
    properties = {
        "name": "s",
        "cpu": "500",
        "mem": "64",
        "persistent": "true",
        "ide:0:0": str(drive["drive"]),
    }
    server = str((await servers.create(user, properties, start=False))["server"])

    stopped = await servers.info_payload(user)
    assert servers.kept_info_payload(user) is stopped
    assert [info["status"] for info in stopped.items] == ["stopped"]

    await servers.start(user, server)
    assert servers.kept_info_payload(user) is None
    for read_bytes in (4096, 8192):
        hypervisor.vm(server).blockstats = {"ide:0:0": BlockStats(read_bytes, 1, 0, 0)}
        (info,) = (await servers.info_payload(user)).items
        assert (info["status"], info["ide:0:0:read:bytes"]) == ("active", read_bytes)
        assert servers.kept_info_payload(user) is None

    await servers.stop(user, server)
    again = await servers.info_payload(user)
    assert [info["status"] for info in again.items] == ["stopped"]
    assert servers.kept_info_payload(user) is again


async def test_a_kept_answer_is_not_given_once_one_of_its_servers_has_a_vm(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    """A start holds its VM (the lifecycle's `active`) before it commits the server's status:
    in between, nothing committed, the answer kept before must not be given."""
    platform, _, user = fake
    servers = platform.servers
    server = str(
        (await servers.create(user, {"name": "s", "cpu": "500", "mem": "64"}, start=False))[
            "server"
        ]
    )
    kept = await servers.info_payload(user)
    assert servers.kept_info_payload(user) is kept

    servers.lifecycle.active[server] = user
    try:
        assert servers.kept_info_payload(user) is None
        assert await servers.info_payload(user) is not kept  # made again, the VM asked
    finally:
        del servers.lifecycle.active[server]
    assert servers.kept_info_payload(user) is kept
