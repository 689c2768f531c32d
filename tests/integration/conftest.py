"""Fixtures for tests against real QEMU: the tiny guest disk, built once and cached.

Every test in this folder is marked `integration` (deselect with `-m "not integration"`).
"""

import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.services.platform import Platform
from testbed.build_guest import build_tiny_guest
from testbed.daemon_process import DaemonProcess
from testbed.leftovers import vm_run_directory

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_guest_image() -> Path:
    """The read-only cached tiny guest disk (see testbed/build_guest.py); copy it to use."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    return build_tiny_guest()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """The run directory of the daemons a test starts as processes; whatever runs under it
    is killed at the end (see testbed/leftovers.py)."""
    with vm_run_directory("ohr-") as path:
        yield path


@pytest.fixture
def daemon_env(run_dir: Path) -> dict[str, str]:
    """The environment of a daemon a test starts: its VMs in `run_dir`, under TCG (the same
    on every machine), and no first user (the test makes its own)."""
    return {
        "OH_FIRST_USER": "0",
        "OH_HYPERVISOR_RUN_DIR": str(run_dir),
        "OH_HYPERVISOR_ACCELERATOR": "tcg",
    }


@pytest.fixture
def daemons(run_dir: Path) -> Iterator[list[DaemonProcess]]:
    """The daemons a test starts (it appends them): killed at its end, before their VMs."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.end(signal.SIGKILL)


@pytest.fixture
async def servers_cleanup(platform: Platform) -> AsyncIterator[None]:
    """Whatever a test leaves running is killed through the service, so no QEMU outlives
    the test and the service sees every exit."""
    yield
    driver = platform.servers.lifecycle.driver
    for server in driver.held():
        await driver.kill(server)
