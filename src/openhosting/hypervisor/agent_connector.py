"""Connecting the control plane to a host's agent: the cluster's control certificate (made by
`openhosting-admin cluster init`) and a `RemoteHypervisorDriver` following the agent's
events, a `RemoteNetworkDriver` over the same connection for the NICs of its VMs, and a
`RemoteDriveStorage` streaming the bytes of the drives it holds. Given to the services
(services/cluster/host_drivers.py, services/cluster/host_storages.py) by the daemon, so that they
hold only the `HypervisorDriver`, `NetworkDriver` and `DriveStorage` interfaces."""

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from openhosting.agent.host_connection import HostConnection
from openhosting.agent.pki import (
    ClusterTlsError,
    check_host_name,
    control_bundle,
    control_context,
)
from openhosting.errors import SystemError_
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import EventHandler, HypervisorDriver
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from openhosting.hypervisor.remote_network import RemoteNetworkDriver
from openhosting.network.driver import NetworkDriver
from openhosting.reverter import Reverter
from openhosting.storage.drive_storage import DriveStorage
from openhosting.storage.remote_storage import RemoteDriveStorage

# (host, agent's HOST:PORT, the handler of its events) → its driver, connected, how to close
# the connection (the agent's VMs untouched), how to ask the agent what its host offers, and
# its host's network driver.
Closer = Callable[[], Awaitable[None]]
Measure = Callable[[], Awaitable[HostCapacity]]
AgentConnector = Callable[
    [str, str, EventHandler], Awaitable[tuple[HypervisorDriver, Closer, Measure, NetworkDriver]]
]


def agent_connector(state_path: Path) -> AgentConnector:
    """Connect to agents with the control certificate of the state directory `state_path`
    (read at the first connection: a platform without agents needs no cluster CA)."""
    context = _ControlContext(state_path)

    async def connect(
        host: str, address: str, handler: EventHandler
    ) -> tuple[HypervisorDriver, Closer, Measure, NetworkDriver]:
        try:
            # Checked again here: a row from before `host set` checked names must leave its
            # host out, not stop the daemon (TLS refuses some as server names: a ValueError).
            check_host_name(host)
        except ClusterTlsError as error:
            raise HypervisorError(f"host agent {host[:80]!r}: not a host name ({error})") from None
        try:
            tls = context.get()
        except (ClusterTlsError, OSError) as error:
            message = f"host agent {host}: no cluster certificate here ({error})"
            raise HypervisorError(message) from None
        driver = RemoteHypervisorDriver(host, address, tls)
        driver.listen(handler)
        async with Reverter() as revert:
            await driver.connect()
            revert.add(driver.close)
            network = RemoteNetworkDriver(host, driver.network_call)
            await network.connect()
            revert.success()
        return driver, driver.close, driver.capacity, network

    return connect


def storage_connector(state_path: Path) -> Callable[[str, str], DriveStorage]:
    """The storage of a host's drives through its agent (storage/remote_storage.py), with the
    control certificate of `state_path` read at the first use."""
    context = _ControlContext(state_path)

    def connect(host: str, address: str) -> DriveStorage:
        try:
            tls = context.get()
        except (ClusterTlsError, OSError) as error:
            message = f"Host {host}'s drives: no cluster certificate here ({error})"
            raise SystemError_(message) from None
        return RemoteDriveStorage(HostConnection(host, address, tls))

    return connect


class _ControlContext:
    """The TLS context of the control certificate of a state directory, read at its first
    use (a platform without agents needs no cluster CA) and kept."""

    def __init__(self, state_path: Path) -> None:
        self._state_path = state_path
        self._context: ssl.SSLContext | None = None

    def get(self) -> ssl.SSLContext:
        """The context; ClusterTlsError or OSError while the certificate cannot be read."""
        if self._context is None:
            self._context = control_context(control_bundle(self._state_path))
        return self._context
