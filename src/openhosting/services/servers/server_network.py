"""The network side of servers: NICs checked against the account, what they hold recorded
while the server runs, and the network driver told to make it so.

A server's `nic:0:dhcp` names an IP resource of its user, or `auto` (a temporary address from
the pool in bridge mode, QEMU's own in user mode), or nothing (no address offered); its
`nic:1:vlan` names a VLAN resource of its user. From start to stop each NIC has a row in
`server_nics`: the address it holds (unique: two active servers cannot hold one address) and
its MAC on its network (unique per network). The rows are what releases an address, what
makes a resource busy, and what the driver keeps after a daemon restart.

VNC may need an address of its own (bridge mode): `vnc:ip IP` naming one of the user's
addresses that is not its nic:0's, or `vnc:ip auto` with no `nic:0:dhcp` (a temporary one from
the pool). That address is held in a row of its own (`nic` VNC_ROW, network `vnc`), so it is
busy, released and kept across restarts like a NIC's; the host takes it on the public bridge
and sends its port 5900 to the server's VNC.

A server whose VM runs on an agent's host has its NICs made there, by that host's network
driver (`remote`, by host: the agent's, over the wire): its taps on that host's bridges, its
DHCP from that host's dnsmasq, its blocked ports there. Its addresses come from the same pool
and rows as everyone's.
"""

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence

from sqlalchemy import Connection, Engine

from openhosting.errors import BusyError, FullError, MissingError, UnavailableError, UsageError
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import NicSpec
from openhosting.model.server import NicConfig, ServerConfig
from openhosting.network.driver import Backend, NetworkDriver, NicPlan
from openhosting.network.errors import NetworkError
from openhosting.network.links import Counters
from openhosting.network.pool import AddressPool
from openhosting.reverter import Reverter
from openhosting.services.resources import Resources, taken_addresses
from openhosting.store import resources as resource_store
from openhosting.store import row_locks
from openhosting.store import vnis as vni_store
from openhosting.store.reader import Reader
from openhosting.store.records import NicRecord

log = logging.getLogger("openhosting.network")

PUBLIC = "public"  # the `network` of NICs on the public bridge
# How often a dead NIC helper is looked for: well within a lease's renewal time.
HELPER_CHECK_SECONDS = 5.0
VNC_NETWORK, VNC_ROW = "vnc", -1  # the row of an address VNC holds apart from the NICs


# Where a host ("": this one) floods each of its VLANs' frames, given the servers whose NICs
# are being made there: VLAN → underlay addresses, or None for the configured peers.
FloodLists = Callable[[str, Collection[str]], Mapping[str, Sequence[str]] | None]
# The same host's VLANs' guests on other hosts: VLAN → {MAC: the underlay address of its host}.
RemoteMacs = Callable[[str, Collection[str]], Mapping[str, Mapping[str, str]]]


def default_mac(server: str, index: int) -> str:
    """A MAC that stays the same for a server's NIC across starts (QEMU's 52:54:00 prefix)."""
    digest = hashlib.sha256(f"{server}:{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


# The NIC plans of the running servers whose infos are being built (`read_ahead`), by server:
# a `servers/info` reads them in one query rather than one per server. A context variable, so
# only the tasks building those infos see them; everything else reads its own.
_READ_AHEAD: contextvars.ContextVar[Mapping[str, list[NicPlan]] | None] = contextvars.ContextVar(
    "nic_plans_read_ahead", default=None
)


def _nic_specs(
    config: ServerConfig, plans: Sequence[NicPlan], backends: Mapping[int, Backend]
) -> tuple[NicSpec, ...]:
    """The NICs of `config` for QEMU, with the MACs of `plans` and their `backends`."""
    by_index = {plan.index: plan for plan in plans}
    return tuple(
        NicSpec(
            index=nic.index,
            model=nic.model,
            mac=by_index[nic.index].mac,
            backend=backends[nic.index],
        )
        for nic in config.nics
    )


def _running_plans(
    rows: Sequence[NicRecord], running: Mapping[str, ServerConfig], vnis: Mapping[str, int]
) -> Iterator[NicPlan]:
    """The NIC plans of the servers of `running` among `rows`, with their blocked ports
    and VNIs."""
    for row in rows:
        config = running.get(row.server)
        if config is not None and row.nic != VNC_ROW:
            blocks = {nic.index: nic.block for nic in config.nics}
            plan = _plan_of(row)
            vni = vnis.get(plan.vlan) if plan.vlan is not None else None
            yield dataclasses.replace(plan, block=blocks.get(row.nic, ()), vni=vni)


def _dhcp_of(config: ServerConfig, index: int) -> bool:
    """Whether `nic:INDEX:dhcp` asks for an address (user mode offers its own then)."""
    return any(nic.index == index and nic.dhcp is not None for nic in config.nics)


def _plan_of(row: NicRecord) -> NicPlan:
    return NicPlan(
        server=row.server,
        index=row.nic,
        mac=row.mac,
        vlan=None if row.network == PUBLIC else row.network,
        address=row.address,
    )


class ServerNetworks:
    """The NICs of servers, over one network driver."""

    def __init__(
        self,
        engine: Engine,
        resources: Resources,
        pool: AddressPool,
        driver: NetworkDriver,
        flood_lists: FloodLists = lambda _host, _making: None,
        remote_macs: RemoteMacs = lambda _host, _making: {},
    ) -> None:
        self._engine = engine
        self._resources = resources
        self._pool = pool
        self.driver = driver
        # Where the host named ("": this one) floods each of its VLANs' frames, from the
        # database (services/cluster/hosts.py's `flood_lists`), read at each attach and refresh.
        self._flood_lists = flood_lists
        # And where it sends the frames of each guest of those VLANs on another host.
        self._remote_macs = remote_macs
        # The network driver of each agent host connected here (the lifecycle's
        # `HostDrivers.networks`), and the host of a server's VM ("": this one).
        self.remote: Mapping[str, NetworkDriver] = {}
        self.host_of: Callable[[str], str] = lambda _server: ""

    def driver_on(self, host: str) -> NetworkDriver:
        """The network driver of `host` ("": this one); UnavailableError (503) naming the
        host when its agent is not connected here."""
        if not host:
            return self.driver
        driver = self.remote.get(host)
        if driver is None:
            raise UnavailableError(f"Host {host} has no agent connected to this API node")
        return driver

    def driver_of(self, server: str) -> NetworkDriver:
        """The network driver of the host where the VM of `server` runs."""
        return self.driver_on(self.host_of(server))

    def namespace_on(self, host: str) -> str | None:
        """The network namespace QEMU runs in on `host` ("": this one)."""
        return self.driver_on(host).namespace or None

    # -- configuration -------------------------------------------------------------------

    def check(self, user: str, config: ServerConfig) -> None:
        """Refuse a configuration whose NICs name resources the user does not own (404), or
        a VLAN where the mode has none (400), or two NICs on one network with one MAC (400:
        the start found the server's own other NIC holding it, and answered 409 naming the
        server as another, active one)."""
        seen: dict[tuple[str, str], int] = {}
        for nic in config.nics:
            if nic.mac is not None:
                if (other := seen.get((nic.vlan or PUBLIC, nic.mac))) is not None:
                    raise UsageError(
                        f"nic:{nic.index}:mac {nic.mac} is nic:{other}:mac too, on the same"
                        " network: give each NIC a MAC of its own"
                    )
                seen[(nic.vlan or PUBLIC, nic.mac)] = nic.index
        with self._engine.connect() as connection:
            for nic in config.nics:
                self._check_nic(connection, user, nic)
            if config.vnc_ip is not None and config.vnc_ip != "auto":
                self._check_vnc_ip(connection, user, config.vnc_ip)

    def _check_vnc_ip(self, connection: Connection, user: str, address: str) -> None:
        """`vnc:ip` names where the customer connects: one of their own addresses, never
        someone else's or one outside the platform."""
        try:
            self._resources.owned(connection, user, "ip", address)
        except MissingError:
            raise UsageError(
                f"vnc:ip {address} is not one of your IP resources: use auto, or an address"
                " from /resources/ip/list"
            ) from None

    def _check_nic(
        self, connection: Connection, user: str, nic: NicConfig, lock: bool = False
    ) -> None:
        if nic.vlan is not None:
            # Where the server will run is not known yet: a VLAN is refused only where no
            # host (this one, or an agent's connected here) runs bridge networking.
            if all(driver.mode == "user" for driver in self._drivers().values()):
                raise UsageError(
                    f"nic:{nic.index}:vlan: VLANs need bridge networking (network.mode bridge);"
                    " this platform runs user-mode networking"
                )
            try:
                self._resources.owned(connection, user, "vlan", nic.vlan, lock=lock)
            except MissingError:
                raise MissingError(
                    f"nic:{nic.index}:vlan: VLAN {nic.vlan} could not be found"
                ) from None
        if nic.dhcp is not None and nic.dhcp != "auto":
            try:
                self._resources.owned(connection, user, "ip", nic.dhcp, lock=lock)
            except MissingError:
                raise MissingError(
                    f"nic:{nic.index}:dhcp: IP {nic.dhcp} could not be found among your"
                    " resources (use auto, or create one with /resources/ip/create)"
                ) from None

    # -- start and stop ------------------------------------------------------------------

    async def acquire(
        self, user: str, server: str, config: ServerConfig, host: str = ""
    ) -> tuple[NicSpec, ...]:
        """Hold the NICs' addresses and MACs and set up their links on `host` ("": this
        one); the NICs for QEMU. 409 `busy` if another active server holds the address or
        MAC, 507 `full` when the pool has no temporary address left. Undone by `release`."""
        driver = self.driver_on(host)
        vlan = next((nic for nic in config.nics if nic.vlan is not None), None)
        if vlan is not None and driver.mode == "user":
            raise UsageError(
                f"nic:{vlan.index}:vlan: VLANs need bridge networking (network.mode bridge);"
                f" {f'host {host}' if host else 'this host'} runs user-mode networking"
            )
        async with Reverter() as revert:
            plans = self._hold(user, server, config, driver.pool_for_auto)
            revert.add(functools.partial(self._forget_nics, server))
            if host:
                await driver.start()  # an agent's network starts with its first NIC
            if any(plan.vlan is not None for plan in plans):
                await self._follow_flood_lists(host, driver, making=(server,))
            backends = await driver.attach(plans)
            revert.success()
        for plan in plans:
            if plan.address is not None:
                log.info(
                    "event=address_held server=%s nic=%s address=%s mac=%s",
                    server, plan.index, plan.address, plan.mac,
                )  # fmt: skip
        return _nic_specs(config, plans, backends)

    # -- a live move between hosts -------------------------------------------------------

    async def attach_on(self, server: str, config: ServerConfig, host: str) -> tuple[NicSpec, ...]:
        """The running server's NICs made on `host` too ("": this one), the target of its
        live move: the same MACs, addresses and blocked ports as its rows and `config` say
        (nothing changes in the database: the address stays held by the server); the NICs
        for the target's QEMU. Undone by `detach_on`."""
        with self._engine.connect() as connection:
            vnis = vni_store.vnis_of(connection, [n.vlan for n in config.nics if n.vlan])
        blocks = {nic.index: nic.block for nic in config.nics}
        plans = [
            dataclasses.replace(
                plan,
                block=blocks.get(plan.index, ()),
                vni=vnis.get(plan.vlan) if plan.vlan is not None else None,
                dhcp=_dhcp_of(config, plan.index),
            )
            for plan in self.plans_of(server)
        ]
        driver = self.driver_on(host)
        if host:
            await driver.start()
        if any(plan.vlan is not None for plan in plans):
            await self._follow_flood_lists(host, driver, making=(server,))
        backends = await driver.attach(plans)
        log.info("event=nics_attached_for_move server=%s host=%s", server, host or "here")
        return _nic_specs(config, plans, backends)

    async def detach_on(self, server: str, host: str) -> None:
        """Remove the server's NICs from `host` ("": this one): the host its VM left, or
        the target of a move that failed. Its addresses stay held (its rows are kept)."""
        await self.driver_on(host).detach(self.plans_of(server))

    def _forget_nics(self, server: str) -> None:
        with self._engine.begin() as connection:
            resource_store.delete_nics(connection, server)

    def _hold(
        self, user: str, server: str, config: ServerConfig, pool_for_auto: bool
    ) -> list[NicPlan]:
        plans: list[NicPlan] = []
        with self._engine.begin() as connection:
            resource_store.delete_nics(connection, server)  # a crashed start's leftovers
            # The pool, then the rows of the resources it uses, held until the NICs are in:
            # a destroy of one, or another node's pick of an address, waits for this start.
            row_locks.lock_address_pool(connection)
            taken = taken_addresses(connection)
            vnis = vni_store.vnis_of(connection, [n.vlan for n in config.nics if n.vlan])
            for nic in config.nics:
                self._check_nic(connection, user, nic, lock=True)
                plan = self._plan(connection, server, nic, taken, pool_for_auto)
                if plan.vlan is not None:
                    plan = dataclasses.replace(plan, vni=vnis.get(plan.vlan))
                if plan.address is not None:
                    taken.add(plan.address)
                resource_store.insert_nic(
                    connection,
                    server=server,
                    nic=nic.index,
                    user=user,
                    network=plan.vlan or PUBLIC,
                    mac=plan.mac,
                    address=plan.address,
                    temporary=nic.dhcp == "auto" and plan.address is not None,
                )
                plans.append(plan)
            if pool_for_auto:  # else user mode: VNC needs no address of its own
                self._hold_vnc_address(connection, user, server, config, plans, taken)
        return plans

    def _hold_vnc_address(
        self,
        connection: Connection,
        user: str,
        server: str,
        config: ServerConfig,
        plans: list[NicPlan],
        taken: set[str],
    ) -> None:
        """Hold the address VNC needs apart from nic:0's, if any (see the module's doc)."""
        if not config.vnc_password or config.vnc_ip is None:
            return  # no VNC server
        nic0 = next((plan.address for plan in plans if plan.index == 0), None)
        if config.vnc_ip == "auto":
            if nic0 is not None:
                return  # VNC goes on the guest's own address
            address = self._pool.choose_free(taken)
            if address is None:
                raise FullError("No free IP address is left in this platform's pool for VNC")
        else:
            if config.vnc_ip == nic0:
                return
            self._check_vnc_ip(connection, user, config.vnc_ip)
            holder = resource_store.holder_of_address(connection, config.vnc_ip)
            if holder is not None:
                raise BusyError(f"vnc:ip {config.vnc_ip} is in use by active server {holder}")
            address = config.vnc_ip
        taken.add(address)
        resource_store.insert_nic(
            connection,
            server=server,
            nic=VNC_ROW,
            user=user,
            network=VNC_NETWORK,
            mac=default_mac(server, VNC_ROW),  # unused: the row's key on its network
            address=address,
            temporary=config.vnc_ip == "auto",
        )

    def vnc_address_of(self, server: str) -> str | None:
        """The address held for the server's VNC apart from its NICs, if any."""
        with self._engine.connect() as connection:
            rows = resource_store.nics_of(connection, server)
        return next((row.address for row in rows if row.nic == VNC_ROW), None)

    def _plan(
        self,
        connection: Connection,
        server: str,
        nic: NicConfig,
        taken: set[str],
        pool_for_auto: bool,
    ) -> NicPlan:
        mac = nic.mac or default_mac(server, nic.index)
        network = nic.vlan or PUBLIC
        holder = resource_store.holder_of_mac(connection, network, mac)
        if holder is not None:
            where = "the public network" if network == PUBLIC else f"VLAN {network}"
            raise BusyError(
                f"nic:{nic.index}:mac {mac} is in use on {where} by active server {holder}"
            )
        address = None
        if nic.dhcp == "auto" and pool_for_auto:
            address = self._pool.choose_free(taken)
            if address is None:
                raise FullError("No free IP address is left in this platform's pool")
        elif nic.dhcp is not None and nic.dhcp != "auto":
            holder = resource_store.holder_of_address(connection, nic.dhcp)
            if holder is not None:
                raise BusyError(
                    f"nic:{nic.index}:dhcp: IP {nic.dhcp} is in use by active server {holder}"
                )
            address = nic.dhcp
        return NicPlan(
            server, nic.index, mac, vlan=nic.vlan, address=address, block=nic.block,
            dhcp=nic.dhcp is not None,
        )  # fmt: skip

    def plans_of(self, server: str) -> list[NicPlan]:
        ahead = _READ_AHEAD.get()
        if ahead is not None and server in ahead:
            return ahead[server]
        with self._engine.connect() as connection:
            rows = resource_store.nics_of(connection, server)
        return [_plan_of(row) for row in rows if row.nic != VNC_ROW]

    @staticmethod
    def read_plans_of_users_servers(
        reader: Reader, user: str, servers: list[str]
    ) -> dict[str, list[NicPlan]]:
        """The NIC plans of each of `servers` (servers of `user`'s), in one query."""
        plans: dict[str, list[NicPlan]] = {server: [] for server in servers}
        for row in resource_store.read_nics_of_users_servers(reader, user):
            if row.nic != VNC_ROW and row.server in plans:
                plans[row.server].append(_plan_of(row))
        return plans

    @staticmethod
    @contextlib.contextmanager
    def read_ahead(plans: Mapping[str, list[NicPlan]]) -> Iterator[None]:
        """Within: `plans_of` answers from `plans` for their servers (the infos' live figures
        of one `servers/info`, read at once), in this context and tasks made in it."""
        token = _READ_AHEAD.set(plans)
        try:
            yield
        finally:
            _READ_AHEAD.reset(token)

    async def block(self, server: str, config: ServerConfig) -> None:
        """A running server's `nic:N:block` changed: its NICs block what `config` says."""
        blocks = {nic.index: nic.block for nic in config.nics}
        for plan in self.plans_of(server):
            await self.driver_of(server).block(
                dataclasses.replace(plan, block=blocks.get(plan.index, ()))
            )
        log.info("event=ports_blocked server=%s", server)

    async def release(self, server: str) -> None:
        """The server stopped: take its links down and let go of its addresses."""
        plans = self.plans_of(server)
        if not plans and self.vnc_address_of(server) is None:
            return
        try:
            await self.driver_of(server).detach(plans)
        finally:
            # Addresses are released even if a link could not be removed: the next daemon
            # start (`recover`) removes what is left, and a leftover tap is replaced on use.
            self._forget_nics(server)
        log.info("event=network_released server=%s", server)

    # -- live figures --------------------------------------------------------------------

    def nic0_address(self, server: str, config: ServerConfig) -> str | None:
        """The address the guest is offered on nic:0, if `nic:0:dhcp` asks for one."""
        nic0 = next((nic for nic in config.nics if nic.index == 0), None)
        if nic0 is None or nic0.dhcp is None:
            return None
        plan = next((plan for plan in self.plans_of(server) if plan.index == 0), None)
        return self.driver_of(server).guest_address(plan) if plan is not None else None

    async def counters(self, server: str) -> Counters:
        return await self.driver_of(server).counters(self.plans_of(server))

    # -- daemon start and stop -----------------------------------------------------------

    async def start(self) -> None:
        """Set up what every server needs (in bridge mode: the public bridge and dnsmasq)."""
        await self.driver.start()

    async def recover(
        self, running: Mapping[str, ServerConfig], under_way: Collection[str] = ()
    ) -> list[str]:
        """After the VMs were adopted: forget the NICs of servers that no longer run, and
        have the driver keep exactly what the running ones (with these configurations)
        use. A server of `under_way` (an operation has it in hand: `Operations.under_way`)
        that does not run here keeps its rows, and while one holds NICs no host's links are
        reconciled (its NICs may be on any of them, made ahead of its row): the hosts left
        for later (`recover_on`) are returned."""
        with self._engine.begin() as connection:
            rows = resource_store.all_nics(connection)
            waiting = self._in_hand(rows, running, under_way)
            for server in {row.server for row in rows} - set(running) - waiting:
                resource_store.delete_nics(connection, server)
            vnis = vni_store.vnis_of(connection, {row.network for row in rows})
        plans: dict[str, list[NicPlan]] = {"": []}  # by host
        for plan in _running_plans(rows, running, vnis):
            plans.setdefault(self.host_of(plan.server), []).append(plan)
        if waiting:
            self._log_deferred(sorted(plans), waiting)
            return sorted(plans)
        for host, kept in plans.items():
            try:
                await self._reconcile_on(host, kept)
            except (HypervisorError, NetworkError, UnavailableError) as error:
                if not host:
                    raise
                # That host's agent is away: its NICs are reconciled when it is back.
                log.warning("event=network_reconcile_failed host=%s error=%s", host, error)
        return []

    async def recover_on(
        self, host: str, running: Mapping[str, ServerConfig], under_way: Collection[str] = ()
    ) -> bool:
        """A host ("": this one) whose VMs were adopted again (its agent back, or
        restarted): its network keeps exactly what `running`, its servers that run, use
        (their blocked ports as their configurations say) and removes the rest. False,
        nothing done, while a server of `under_way` that does not run there holds NICs
        (a move's on its way in: see `recover`): the caller looks again later."""
        with self._engine.connect() as connection:
            rows = resource_store.all_nics(connection)
            vnis = vni_store.vnis_of(connection, {row.network for row in rows})
        if waiting := self._in_hand(rows, running, under_way):
            self._log_deferred([host], waiting)
            return False
        await self._reconcile_on(host, list(_running_plans(rows, running, vnis)))
        return True

    @staticmethod
    def _in_hand(
        rows: Sequence[NicRecord], running: Mapping[str, ServerConfig], under_way: Collection[str]
    ) -> set[str]:
        """The servers of `under_way` with NIC rows among `rows` that are not `running`."""
        return {row.server for row in rows if row.server in under_way} - set(running)

    @staticmethod
    def _log_deferred(hosts: Sequence[str], servers: Collection[str]) -> None:
        log.info(
            "event=network_reconcile_deferred hosts=%s servers=%s",
            ",".join(host or "here" for host in hosts), ",".join(sorted(servers)),
        )  # fmt: skip

    async def _reconcile_on(self, host: str, plans: Sequence[NicPlan]) -> None:
        if host and not plans:
            # Nothing runs there with a NIC: its network is left unset-up (what servers that
            # ended meanwhile held, their release detached there).
            return
        driver = self.driver_on(host)
        if host:
            await driver.start()
        if any(plan.vlan is not None for plan in plans):
            await self._follow_flood_lists(host, driver)
        await driver.reconcile(plans)

    def _drivers(self) -> dict[str, NetworkDriver]:
        return {"": self.driver, **self.remote}

    async def _follow_flood_lists(
        self, host: str, driver: NetworkDriver, making: Collection[str] = ()
    ) -> None:
        """`host`'s VLANs flood to the hosts running their servers now (`making`: servers
        whose NICs are being made there, whose row may not name the host yet)."""
        lists = await asyncio.to_thread(self._flood_lists, host, making)
        await driver.set_vxlan_peers(lists)
        if lists is not None:  # from the database: each remote guest's frames to its host
            macs = await asyncio.to_thread(self._remote_macs, host, making)
            await driver.set_vxlan_macs(macs)

    async def refresh_vxlan_peers(self) -> None:
        """The VLANs running on each host flood to the hosts that run one of their servers
        now (a server of the VLAN started or stopped elsewhere, a host came or went)."""

        async def refresh(host: str, driver: NetworkDriver) -> None:
            if driver.mode == "bridge":
                await self._follow_flood_lists(host, driver)

        await self._on_every_host("vxlan_peers_refresh_failed", refresh)

    async def follow_move(self, server: str, config: ServerConfig) -> None:
        """`server` now runs on the host its row names, after a live move: when it has a
        VLAN NIC, every host's flood lists follow at once, not at the next refresh (until
        then its VLAN's other hosts would flood the guest's frames to the host it left, and
        the running guest would miss them). A failure is logged: the next refresh retries."""
        if not any(nic.vlan is not None for nic in config.nics):
            return
        try:
            await self.refresh_vxlan_peers()
        except Exception:  # the move is done; the 5-second watch sets the lists again
            log.exception("event=vxlan_peers_refresh_failed server=%s", server)

    async def _on_every_host(
        self, failed: str, step: Callable[[str, NetworkDriver], Awaitable[None]]
    ) -> None:
        """`step` on every host's network at once (an agent that does not answer costs one
        wait, not one per host); a host's failure is logged as `failed`, and the local
        host's raised once all are done."""
        drivers = self._drivers()
        results = await asyncio.gather(
            *(step(host, driver) for host, driver in drivers.items()), return_exceptions=True
        )
        for host, result in zip(drivers, results, strict=True):
            if isinstance(result, BaseException):
                if not host:
                    raise result
                log.warning("event=%s host=%s error=%s", failed, host, result)

    async def keep_helpers_running_every(self, interval: float = HELPER_CHECK_SECONDS) -> None:
        """Every `interval` seconds, start again a NIC helper that died (bridge mode's
        dnsmasq) and follow the VXLAN peers, until cancelled; a failed attempt is logged and
        tried again next time."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._on_every_host(
                    "nic_helper_restart_failed", lambda _host, d: d.keep_helpers_running()
                )
            except Exception:  # a broken restart must not end the watch (nor the daemon)
                log.exception("event=nic_helper_restart_failed")
            try:
                await self.refresh_vxlan_peers()
            except Exception:  # a busy database or a failed command: next time
                log.exception("event=vxlan_peers_refresh_failed")

    async def close(self) -> None:
        """This host's network stops (the agents' stay with their hosts' VMs)."""
        with self._engine.connect() as connection:
            rows = resource_store.all_nics(connection)
        await self.driver.close(idle=not any(not self.host_of(row.server) for row in rows))
