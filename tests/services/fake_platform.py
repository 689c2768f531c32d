"""A platform whose hypervisor is the fake (`hypervisor.driver = fake`): real SQLite, real
files, real services, VMs in memory. For fast service-level tests of the VM lifecycle; the
QEMU side of the same rules is tests/hypervisor/test_driver_behaviour.py and the integration
tests."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openhosting.hypervisor.fake import FakeHypervisor
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
