"""The account's cpu and mem limits (docs/api.md §5, 'Claims') hold for starts that run at
once: a server counts against them from its claims, not only once its VM runs. Found on a
real daemon: three servers of 500 MHz and 32 MB started together under limits of 1000 MHz
and 64 MB all became active (one at a time, the third is refused). Over the fake hypervisor,
the first VM's start held until the second start has been answered."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.errors import BillingError, FailedError
from openhosting.hypervisor import driver
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from tests.services.fake_platform import fake_platform

SERVER = {"name": "s", "cpu": "500", "mem": "32", "persistent": "true"}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


async def test_two_starts_at_once_cannot_both_pass_a_limit_that_holds_one(
    fake: tuple[Platform, FakeHypervisor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, hypervisor, user = fake
    platform.accounts.set_limits(user, max_cpu_mhz=500, max_mem_mb=32)
    first, second = [
        str((await platform.servers.create(user, SERVER, start=False))["server"]) for _ in "ab"
    ]
    booting = asyncio.Event()  # a VM is being started: its claims are made
    answered = asyncio.Event()  # the other start has been answered
    start_vm = hypervisor.start

    async def slow_start(
        request: driver.StartRequest, restore: driver.StateStream | None = None
    ) -> driver.VmStatus:
        if request.spec.uuid == first:  # only the first VM waits for the other's answer
            booting.set()
            await asyncio.wait_for(answered.wait(), 5)
        return await start_vm(request, restore)

    monkeypatch.setattr(hypervisor, "start", slow_start)

    async def start_second() -> BaseException | None:
        await booting.wait()
        try:
            await platform.servers.start(user, second)
            return None
        except BillingError as error:
            return error
        finally:
            answered.set()

    _, refused = await asyncio.gather(platform.servers.start(user, first), start_second())
    assert isinstance(refused, BillingError), "both servers started beyond the limit"
    assert "cpu limit of active servers exceeded: 500 MHz in use" in str(refused)
    statuses = [(await platform.servers.info(user, s))["status"] for s in (first, second)]
    assert statuses == ["active", "stopped"]
    # Once the first stops, the second fits.
    await platform.servers.stop(user, first)
    await platform.servers.start(user, second)
    assert (await platform.servers.info(user, second))["status"] == "active"


async def test_a_start_that_fails_no_longer_counts_against_the_limit(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    platform.accounts.set_limits(user, max_cpu_mhz=500, max_mem_mb=32)
    server = str((await platform.servers.create(user, SERVER, start=False))["server"])
    hypervisor.fail_next_start()
    with pytest.raises(FailedError, match="simulated"):
        await platform.servers.start(user, server)
    await platform.servers.start(user, server)
    assert (await platform.servers.info(user, server))["status"] == "active"
