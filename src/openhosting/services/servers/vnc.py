"""The VNC servers of servers: the one owner of everything VNC for them.

- Which display a server's VNC server gets: `claim` picks one in the start's transaction and
  keeps it in the server's row (`vnc_display`), `release` gives it back when the VM ends or
  its start fails. Never a display another server holds, nor one whose port something else on
  this host listens on (the hypervisor driver probes the port: the host is its side).
- Where it listens (`listen_address`: in bridge mode the host's address on the public bridge,
  as QEMU may run in a namespace where the host's loopback is out of reach; else the
  hypervisor's `vnc_listen`) and where its user reaches it: there at 5900 + display, or in
  bridge mode on the server's own address at 5900 (the overlay, `open_overlay`).
- Its password (given at start, changed live by `set`) and its TLS: the names its certificate
  holds, and the platform's VNC CA the web console trusts.
- For the web console (services/servers/consoles.py): where the daemon logs in to it (`target`).

The hypervisor driver only makes QEMU serve VNC as the VM's spec says (`VncSpec`); VNC's port
numbers are vnc/ports.py's.
"""

import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from openhosting.config import Config
from openhosting.errors import BusyError
from openhosting.hypervisor.driver import HypervisorDriver
from openhosting.hypervisor.errors import HypervisorError
from openhosting.model.server import ServerConfig
from openhosting.services.servers.server_network import ServerNetworks
from openhosting.store import servers as server_store
from openhosting.store.records import ServerRecord
from openhosting.vnc.ports import VNC_BASE_PORT, VNC_DISPLAYS, vnc_port
from openhosting.vnc.tls import CA_CERT, vnc_tls_dir


@dataclass(frozen=True)
class VncTarget:
    """Where and how the daemon logs in to one server's VNC."""

    host: str
    port: int
    password: str
    tls: bool  # `vnc:tls on`: VeNCrypt X509 with the platform's VNC CA


@dataclass(frozen=True)
class VncCredentials:
    """What QEMU's VNC server of a starting VM is given: its password (None: no VNC server)
    and the names its TLS certificate holds besides the listen address."""

    password: str | None
    names: tuple[str, ...] = ()


class ServerVnc:
    """The VNC servers of this host's servers: displays, addresses, overlays, credentials."""

    def __init__(self, config: Config, networks: ServerNetworks, driver: HypervisorDriver) -> None:
        self._settings = config.hypervisor
        self._tls_dir = vnc_tls_dir(config.state_path)
        self._networks = networks
        self._driver = driver
        # The driver of a host by name ("": this one): the lifecycle's `HostDrivers.of`.
        self.driver_on: Callable[[str], HypervisorDriver] = lambda _host: driver
        # Servers whose VNC is also on their own address (bridge mode): that address.
        self._overlays: dict[str, str] = {}

    # -- displays --------------------------------------------------------------------

    def claim(
        self, connection: Connection, server: str, config: ServerConfig, host: str = ""
    ) -> int | None:
        """Pick the display of `server`, starting on `host` ("": this one), and keep it in
        its row, in the caller's transaction (so two starts never pick the same one); None if
        it has no VNC server (no password). 409 busy if every display is taken. The port is
        probed by the host's driver: from a worker thread, as an agent's is asked over the
        wire."""
        if not config.vnc_password:
            return None
        used = server_store.used_vnc_displays(connection)
        for display in range(VNC_DISPLAYS):
            if display in used:
                continue
            # Probed where VNC listens in user mode, as before the move (bridge mode's
            # address is the host's own too).
            probe = self.driver_on(host)
            if not probe.vnc_port_free(self._settings.vnc_listen, vnc_port(display)):
                continue
            server_store.update_server(connection, server, vnc_display=display)
            return display
        raise BusyError("No free VNC display on this host")

    def release(self, connection: Connection, server: str) -> None:
        """The VM of `server` ended (or never started): its display is free again."""
        server_store.update_server(connection, server, vnc_display=None)

    # -- where it is reached ---------------------------------------------------------

    def listen_address(self, host: str = "") -> str:
        """Where VNC servers listen on `host` ("": this one): its network mode's address,
        else the hypervisor's."""
        return self._networks.driver_on(host).vnc_address or self._settings.vnc_listen

    def endpoint(self, display: int, host: str = "") -> tuple[str, int]:
        """Where the daemon itself reaches the VNC server of `display` on `host` (the web
        console)."""
        return self.listen_address(host), vnc_port(display)

    def public_endpoint(self, server: str, display: int | None) -> tuple[str | None, int | None]:
        """Where the user reaches the VNC of `server` (its info's `vnc:ip` and port): its
        overlay address at 5900, else the listen address; (None, None) without VNC."""
        if display is None:
            return None, None
        if (overlay := self._overlays.get(server)) is not None:
            return overlay, VNC_BASE_PORT
        return self.endpoint(display, self._networks.host_of(server))

    async def open_overlay(self, server: str, config: ServerConfig, display: int) -> None:
        """In bridge mode, VNC is also reached on the server's own address, port 5900: the
        address held for its VNC, else its nic:0 address, where the mode can; made by the
        network of the host where its VM runs."""
        port = vnc_port(display)
        network = self._networks.driver_of(server)
        if (own := self._networks.vnc_address_of(server)) is not None:
            if await network.open_vnc_address(own, port):
                self._overlays[server] = own
            return
        guest = self._networks.nic0_address(server, config)
        if guest is not None and await network.open_vnc(guest, port):
            self._overlays[server] = guest

    async def close_overlay(self, server: str) -> None:
        """Undo `open_overlay` (before the network lets go of the server's addresses)."""
        address = self._overlays.pop(server, None)
        if address is None:
            return
        network = self._networks.driver_of(server)
        if address == self._networks.vnc_address_of(server):
            await network.close_vnc_address(address)
        else:
            await network.close_vnc(address)

    # -- credentials -----------------------------------------------------------------

    def credentials(self, server: str, config: ServerConfig, display: int | None) -> VncCredentials:
        """The password and certificate names of the VNC server the VM of `server` starts
        with on `display` (None: no VNC server, no password)."""
        if display is None:
            return VncCredentials(password=None)
        names: tuple[str, ...] = ()
        if config.vnc_tls:
            # The certificate also names where the user connects: their VNC or nic:0 address.
            name = self._networks.vnc_address_of(server) or self._networks.nic0_address(
                server, config
            )
            names = (name,) if name else ()
        return VncCredentials(password=config.vnc_password, names=names)

    async def set_password(self, server: str, password: str | None) -> None:
        """`set vnc:password` on a running server: its VNC server takes it at once."""
        with contextlib.suppress(HypervisorError):  # no VNC server: applies at next start
            await self.driver_on(self._networks.host_of(server)).set_vnc_password(server, password)

    def tls_context(self) -> ssl.SSLContext:
        """Trust in the platform's VNC CA alone, as QEMU's VeNCrypt X509 server shows it."""
        return ssl.create_default_context(cafile=str(self._tls_dir / CA_CERT))

    # -- the web console -------------------------------------------------------------

    def target(self, row: ServerRecord) -> VncTarget:
        """Where the daemon logs in to the VNC of the running server in `row`, and how;
        BusyError if it has none now."""
        display = row.vnc_display
        password = row.config.vnc_password
        if not password or display is None:
            raise BusyError(
                f"Server {row.uuid} has no VNC console: set vnc:password and restart it"
            )
        host, port = self.endpoint(display, self._networks.host_of(row.uuid))
        return VncTarget(host, port, password, row.config.vnc_tls)
