"""A platform whose hypervisor is the fake (`hypervisor.driver = fake`): real SQLite, real
files, real services, VMs in memory. For fast service-level tests of the VM lifecycle; the
QEMU side of the same rules is tests/hypervisor/test_driver_behaviour.py and the integration
tests."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import EventHandler, HypervisorDriver
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.host_drivers import Closer, Measure
from openhosting.services.platform import Platform, open_platform
from tests.conftest import config_in


@contextmanager
def fake_platform(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor]]:
    """An open platform on `tmp_path` and its fake hypervisor."""
    platform = open_platform(config_in(tmp_path, hypervisor={"driver": "fake"}))
    try:
        driver = platform.servers.lifecycle.driver
        assert isinstance(driver, FakeHypervisor)
        yield platform, driver
    finally:
        platform.close()


# What the fake agent of `platform_with_agent_host` reports of its host.
REMOTE_CAPACITY = HostCapacity(
    cores=4, core_mhz=2000, memory_mb=4096, disk_bytes_by_tier={"disk": 1 << 40, "ssd": 1 << 40}
)


@contextmanager
def platform_with_agent_host(
    tmp_path: Path, host: str = "hv-a"
) -> Iterator[tuple[Platform, FakeHypervisor, FakeHypervisor, str]]:
    """A fake platform on its own host, with host `host` whose agent is a fake of its own
    (reached by the platform's next `servers.recover()`, reporting REMOTE_CAPACITY), and a
    user: (platform, this host's driver, the other host's, the user's uuid)."""
    with fake_platform(tmp_path) as (platform, local):
        remote = FakeHypervisor(tmp_path / f"{host}-run")

        async def connect(
            name: str, _address: str, handler: EventHandler
        ) -> tuple[HypervisorDriver, Closer, Measure]:
            assert name == host
            remote.listen(handler)

            async def close() -> None:
                pass

            async def measure() -> HostCapacity:
                return REMOTE_CAPACITY

            return remote, close, measure

        platform.hosts.register()
        platform.hosts.set_agent(host, "127.0.0.1:7430")
        platform.hosts.heartbeat({host: REMOTE_CAPACITY})
        platform.servers.lifecycle.drivers.connector = connect
        yield platform, local, remote, platform.accounts.create_user().uuid
