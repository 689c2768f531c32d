"""Fixtures of the bridge-mode tests: a network namespace standing in for the host's network,
a platform in bridge mode inside it, and its clean-up. A test module imports the three
`*_fixture` functions; they serve as `namespace`, `config` and `bridge_platform`."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.config import Config
from openhosting.services.platform import Platform
from tests.conftest import config_in
from tests.integration.netns_helpers import network_namespace


@pytest.fixture(name="namespace")
def namespace_fixture() -> Iterator[str]:
    with network_namespace() as name:
        yield name


@pytest.fixture(name="config")
def bridge_config_fixture(tmp_path: Path, namespace: str) -> Config:
    return config_in(
        tmp_path,
        hypervisor={"accelerator": "tcg"},
        network={"mode": "bridge", "namespace": namespace, "lease_seconds": 120},
    )


@pytest.fixture(name="bridge_platform")
async def bridge_platform_fixture(platform: Platform) -> AsyncIterator[Platform]:
    """The platform; afterwards every VM is killed and the daemon's shutdown path runs, which
    with no server left removes the DHCP server and the bridges."""
    yield platform
    driver = platform.servers.lifecycle.driver
    for server in driver.held():
        await driver.kill(server)
    await platform.servers.close()
