"""Hosts: this host's capacity, measured and registered with the platform, its heartbeat,
and every host's capacity and use for placement and the operator (`openhosting-admin host
list`).

A host with an agent (`hosts.agent`, `openhosting-admin host set NAME --agent HOST:PORT`)
is heartbeaten by the daemon that reached its agent, and takes drives and servers while
online; a server's use counts against the host that runs it (`servers.host`). The drives'
bytes still live in the API daemon's drive directory (docs/cluster.md): a drive's host says
which host's VMs it is meant for and what `avoid` keeps apart.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from openhosting.agent.host_connection import split_agent_address
from openhosting.agent.pki import ClusterTlsError, check_host_name
from openhosting.config import Config
from openhosting.errors import FullError, MissingError, UnavailableError, UsageError
from openhosting.host_capacity import HostCapacity, measure_capacity
from openhosting.network.vxlan import underlay_address
from openhosting.services.cluster.placement import (
    DriveRequest,
    HostLoad,
    ServerRequest,
    place_drive,
    place_moved_server,
    place_server,
)
from openhosting.store import hosts as host_store
from openhosting.store import vnis as vni_store
from openhosting.store.records import HostRecord

log = logging.getLogger("openhosting.hosts")

EMPTY: Mapping[str, HostCapacity] = MappingProxyType({})
# What the agents of the hosts reached report at a heartbeat: host → its capacity.
AgentReports = Callable[[], Awaitable[Mapping[str, HostCapacity]]]


async def no_agents() -> Mapping[str, HostCapacity]:
    return EMPTY


def measure_host(config: Config, now: float) -> HostRecord:
    """This host as the configuration and the kernel describe it."""
    record = host_record(config.host_name, measure_capacity(config), now)
    return dataclasses.replace(record, vxlan_local=config.network.vxlan_local)


def host_record(name: str, capacity: HostCapacity, now: float) -> HostRecord:
    """The row of host `name`, online at `now` with `capacity`."""
    return HostRecord(
        name=name,
        state="online",
        cores=capacity.cores,
        core_mhz=capacity.core_mhz,
        memory_mb=capacity.memory_mb,
        disk_bytes_by_tier=capacity.disk_bytes_by_tier,
        heartbeat_at=now,
        created_at=now,
    )


@dataclass(frozen=True)
class HostView:
    """A host as the operator sees it: capacity, use and state."""

    record: HostRecord
    state: str  # online, or offline when its heartbeat is older than host.offline_seconds
    heartbeat_age: float
    load: HostLoad


class Hosts:
    """The hosts service: this host's registration and heartbeat, every host's load."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self._engine = engine
        self._config = config
        self.name = config.host_name
        self.local = measure_host(config, time.time())
        # The hosts offline at the last look (`refresh_offline`, at each heartbeat).
        self.offline: frozenset[str] = frozenset()

    def register(self) -> HostRecord:
        """Measure this host again and record it; drives from before hosts become its own."""
        now = time.time()
        self.local = measure_host(self._config, now)
        try:
            with self._engine.begin() as connection:
                host_store.register_host(connection, self.local)
        except IntegrityError:
            # Another daemon of this host (API nodes side by side) inserted its row between
            # our look and our insert: the row is there now, and is updated in place.
            with self._engine.begin() as connection:
                host_store.register_host(connection, self.local)
        log.info(
            "event=host_registered host=%s cores=%s memory_mb=%s",
            self.name,
            self.local.cores,
            self.local.memory_mb,
        )
        return self.local

    def heartbeat(self, agents: Mapping[str, HostCapacity] = EMPTY) -> None:
        """Say that this host, and the hosts of `agents` (whose agents this daemon reached
        and which reported what their host offers), are alive; mark the hosts silent for
        longer than `host.offline_seconds` offline (`hosts.state`), and keep their names in
        `offline` (every node's beats are in the rows). One transaction."""
        now = time.time()
        with self._engine.begin() as connection:
            known = host_store.heartbeat(connection, self.name, now)
            if not known:  # the row went (an operator's mistake): put it back
                host_store.register_host(connection, self.local)
            for host, capacity in agents.items():
                host_store.heartbeat(connection, host, now, capacity)
            limit = now - self._config.host.offline_seconds
            host_store.mark_offline(connection, limit)
            self._keep_offline(host_store.list_hosts(connection), limit)

    def refresh_offline(self) -> frozenset[str]:
        """The hosts whose heartbeat is older than `host.offline_seconds`, read again."""
        limit = time.time() - self._config.host.offline_seconds
        with self._engine.connect() as connection:
            self._keep_offline(host_store.list_hosts(connection), limit)
        return self.offline

    def _keep_offline(self, records: list[HostRecord], limit: float) -> None:
        """Keep the names of the hosts of `records` silent since before `limit` (never this
        one: it answers for itself) until the next look, for the infos, which must not read
        the hosts for each object."""
        self.offline = frozenset(
            r.name for r in records if r.heartbeat_at < limit and r.name != self.name
        )

    def _offline_error(self, host: str, what: str) -> UnavailableError:
        return UnavailableError(
            f"Host {host} is offline (no heartbeat for over"
            f" {self._config.host.offline_seconds} s): {what} must wait until it is back"
        )

    async def heartbeat_every(self, agents: AgentReports = no_agents) -> None:
        """Heartbeat every `host.heartbeat_seconds` until cancelled, with what `agents`
        reports at each beat (the agents' hosts that answered, and their capacity)."""
        interval = max(1, self._config.host.heartbeat_seconds)
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.heartbeat, await agents())
            except Exception as error:  # a busy or failing database: try again next beat
                log.warning("event=heartbeat_failed host=%s error=%s", self.name, error)

    def _loads(
        self, connection: Connection, records: list[HostRecord], servers: bool = True
    ) -> list[HostLoad]:
        """The load of each host of `records`; without `servers`, their drives' only (a
        drive's placement needs no cpu or mem, and decoding every server's configuration
        would cost each drive create)."""
        drive_bytes = host_store.drive_bytes_by_host(connection)
        used = host_store.server_use_by_host(connection, self.name) if servers else {}
        loads = []
        for record in records:
            used_mhz, used_mb = used.get(record.name, (0, 0))
            loads.append(
                HostLoad(
                    name=record.name,
                    capacity=record.capacity,
                    used_mhz=used_mhz,
                    used_memory_mb=used_mb,
                    used_bytes_by_tier={
                        tier: size
                        for (host, tier), size in drive_bytes.items()
                        if host == record.name
                    },
                )
            )
        return loads

    def place_drive(
        self, connection: Connection, user: str, size: int, tier: str, avoid: tuple[str, ...]
    ) -> str:
        """The host a new drive of `user` goes to (FullError when none has room). Only the
        user's own drives in `avoid` count: another user's are ignored like words that name
        no drive, so that `avoid` (and a 507 naming the drives) cannot tell where others'
        drives live."""
        avoid_hosts = host_store.hosts_of_drives(connection, list(avoid), user=user)
        request = DriveRequest(size=size, tier=tier, avoid_hosts=avoid_hosts)
        candidates = [self.local, *self._online_agent_hosts(connection)]
        return place_drive(request, self._loads(connection, candidates, servers=False))

    def _online_agent_hosts(self, connection: Connection) -> list[HostRecord]:
        """The hosts other than this one with an agent and a recent heartbeat."""
        limit = time.time() - self._config.host.offline_seconds
        return [
            record
            for record in host_store.list_hosts(connection)
            if record.agent and record.name != self.name and record.heartbeat_at >= limit
        ]

    def place_server(
        self, cpu: int, mem: int, boot_drive: str | None, with_driver: Collection[str]
    ) -> str:
        """The host a starting server goes to: its boot drive's when that one has room,
        among the hosts `with_driver` (those this daemon can run VMs on). FullError (507)
        naming the host when the boot drive's host has no driver here, or when none has
        room."""
        with self._engine.connect() as connection:
            boot_host = (
                host_store.hosts_of_drives(connection, [boot_drive]).get(boot_drive)
                if boot_drive
                else None
            )
            online = self._online_agent_hosts(connection)
            if boot_host and boot_host != self.name and boot_host not in {r.name for r in online}:
                found = host_store.get_host(connection, boot_host)
                if found is not None and found.agent:  # registered, and silent
                    raise self._offline_error(boot_host, f"a server booting from {boot_drive}")
            if boot_host and boot_host not in with_driver:
                raise FullError(
                    f"Host {boot_host} holding boot drive {boot_drive} has no agent connected"
                    " to this API node: the server cannot start there now"
                )
            records = [self.local] + [r for r in online if r.name in with_driver]
            loads = self._loads(connection, records)
        return place_server(ServerRequest(cpu=cpu, mem=mem, boot_host=boot_host), loads)

    def place_moved_server(
        self, cpu: int, mem: int, source: str, with_driver: Collection[str]
    ) -> str:
        """The host a running server of `source` moves to (a drain): one of the online hosts
        `with_driver` other than `source`, with room for it (FullError when none has)."""
        with self._engine.connect() as connection:
            records = [
                r
                for r in [self.local, *self._online_agent_hosts(connection)]
                if r.name in with_driver and r.name != source
            ]
            loads = self._loads(connection, records)
        return place_moved_server(ServerRequest(cpu=cpu, mem=mem, boot_host=None), loads)

    def known(self, name: str) -> bool:
        """Whether host `name` is registered."""
        with self._engine.connect() as connection:
            return host_store.get_host(connection, name) is not None

    def set_agent(self, name: str, agent: str) -> HostRecord:
        """Record HOST:PORT of host `name`'s agent (empty: none). A host not registered yet
        is registered with nothing to offer and no heartbeat: offline until a daemon reaches
        its agent, which then reports the host's capacity at each heartbeat."""
        try:
            # Its name is the TLS server name of every call to its agent: another could never
            # be reached (and one TLS cannot even ask for stopped every daemon at its start).
            # Removing an agent is left to any name: a row from before this check can go.
            if agent:
                check_host_name(name)
                split_agent_address(agent)
        except ClusterTlsError as error:
            raise UsageError(str(error)) from None
        except ValueError as error:
            message = f"Invalid agent address {agent[:80]!r}: expected HOST:PORT, {error}"
            raise UsageError(message) from None
        if name == self.name and agent:
            raise UsageError(f"Host {name} is this daemon's own host: its VMs run in-process")
        with self._engine.begin() as connection:
            if not host_store.set_agent(connection, name, agent):
                if not agent:
                    raise MissingError(f"Host {name} is not registered")
                unknown = HostCapacity(cores=0, core_mhz=0, memory_mb=0, disk_bytes_by_tier={})
                record = dataclasses.replace(host_record(name, unknown, 0.0), agent=agent)
                host_store.add_host(connection, record)
            found = host_store.get_host(connection, name)
        assert found is not None
        return found

    def set_vxlan_local(self, name: str, address: str) -> HostRecord:
        """Record host `name`'s VXLAN underlay address (empty: none): the other hosts flood
        its VLANs' frames to it while it is online. The host must be registered."""
        if address:
            try:
                address = str(underlay_address(address))
            except ValueError as error:
                raise UsageError(f"Invalid underlay address: {error}") from None
        with self._engine.begin() as connection:
            if not vni_store.set_vxlan_local(connection, name, address):
                raise MissingError(f"Host {name} is not registered")
            found = host_store.get_host(connection, name)
        assert found is not None
        return found

    def vxlan_peers(self, host: str = "") -> list[str]:
        """The underlay addresses of the online hosts other than `host` ("": this one) (the
        hosts table's), by address."""
        since = time.time() - self._config.host.offline_seconds
        with self._engine.connect() as connection:
            return vni_store.vxlan_peers(connection, host or self.name, since)

    def flood_lists(
        self, host: str = "", making: Collection[str] = ()
    ) -> dict[str, list[str]] | None:
        """Where `host` ("": this one) floods each of its VLANs' frames: VLAN → the underlay
        addresses of the other online hosts running one of its servers (store/vnis.py's
        `flood_lists`; `making`: the servers whose NICs are being made there now). None
        while the table knows no other online host's address: the VLANs flood to
        `network.vxlan_peers` then."""
        since = time.time() - self._config.host.offline_seconds
        local = host or self.name
        with self._engine.connect() as connection:
            lists = vni_store.flood_lists(connection, local, self.name, since, making)
            if any(lists.values()) or vni_store.any_peer(connection, local, since):
                return lists
        return None

    def remote_macs(
        self, host: str = "", making: Collection[str] = ()
    ) -> dict[str, dict[str, str]]:
        """Where `host` ("": this one) sends each remote guest's frames: VLAN → {MAC of a
        NIC on it of a server on another online host: that host's underlay address}
        (store/vnis.py's `remote_macs`)."""
        since = time.time() - self._config.host.offline_seconds
        with self._engine.connect() as connection:
            return vni_store.remote_macs(connection, host or self.name, self.name, since, making)

    def overview(self) -> list[HostView]:
        """Every registered host with its capacity, use and state, by name."""
        now = time.time()
        with self._engine.connect() as connection:
            records = host_store.list_hosts(connection)
            loads = self._loads(connection, records)
        views = []
        for record, load in zip(records, loads, strict=True):
            age = max(0.0, now - record.heartbeat_at)
            offline = age > self._config.host.offline_seconds
            views.append(
                HostView(
                    record=record,
                    state="offline" if offline else record.state,
                    heartbeat_age=age,
                    load=load,
                )
            )
        return views
