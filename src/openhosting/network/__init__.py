"""Server networking: the address pool, and the drivers of the two modes (see driver.py)."""

from pathlib import Path

from openhosting.config import ConfigError, NetworkSettings
from openhosting.network.bridge_mode import BridgeNetwork
from openhosting.network.driver import NetworkDriver
from openhosting.network.pool import AddressPool, PoolError
from openhosting.network.user_mode import UserNetwork

MODES = ("user", "bridge")


def open_network(
    settings: NetworkSettings, run_dir: Path, run_as: str = "auto"
) -> tuple[AddressPool, NetworkDriver]:
    """The pool and the driver the settings describe; bridge mode keeps its DHCP server's
    files under `run_dir`, user mode its passt helpers' (run as `run_as`, QEMU's account).
    Nothing on the host changes until the driver is used."""
    try:
        pool = AddressPool.parse(
            settings.pool_subnet,
            settings.pool_gateway,
            settings.pool_nameservers,
            settings.pool_range,
        )
        if settings.mode == "user":
            return pool, UserNetwork(pool, run_dir, run_as)
        if settings.mode == "bridge":
            return pool, BridgeNetwork(settings, pool, run_dir)
    except (PoolError, ValueError) as error:
        raise ConfigError(f"Invalid network settings: {error}") from None
    raise ConfigError(f"Invalid network.mode {settings.mode!r}: use {' or '.join(MODES)}")
