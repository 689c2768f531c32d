"""The hypervisor driver of each host this daemon runs VMs on: its own host's in-process
driver, and a `RemoteHypervisorDriver` per host whose row names an agent (`hosts.agent`,
`openhosting-admin host set NAME --agent HOST:PORT`).

Every driver's events go to one handler, tagged with the host they came from. A host whose
agent cannot be reached at `connect_agents` has no driver here: a server placed there cannot
start (placement leaves the host out) and its calls say which host is missing.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from sqlalchemy import Engine

from openhosting.errors import FullError
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import EventHandler, HypervisorDriver, VmEvent
from openhosting.hypervisor.errors import HypervisorError
from openhosting.network.driver import NetworkDriver
from openhosting.store import hosts as host_store

log = logging.getLogger("openhosting.hosts")

HostEventHandler = Callable[[str, VmEvent], Awaitable[None]]
# (host, agent's HOST:PORT, its events' handler) → its driver, connected, how to close the
# connection, how to ask the agent what its host offers, and its host's network driver:
# hypervisor/agent_connector.py's, which the daemon gives (the services hold only the
# driver interface).
Closer = Callable[[], Awaitable[None]]
Measure = Callable[[], Awaitable[HostCapacity]]
AgentConnector = Callable[
    [str, str, EventHandler], Awaitable[tuple[HypervisorDriver, Closer, Measure, NetworkDriver]]
]


class HostDrivers:
    """Host name → the driver that runs its VMs; the empty name is this daemon's own host."""

    def __init__(self, local_name: str, local: HypervisorDriver) -> None:
        self.local_name = local_name
        self.local = local
        self.remote: dict[str, HypervisorDriver] = {}
        # The network driver of each host in `remote`: the NICs of its VMs are made there.
        self.networks: dict[str, NetworkDriver] = {}
        self._closers: list[Closer] = []
        self._measures: dict[str, Measure] = {}
        self._handler: HostEventHandler | None = None
        # How to reach an agent; None (the admin tool, tests of one host): agents are left
        # alone.
        self.connector: AgentConnector | None = None

    def listen(self, handler: HostEventHandler) -> None:
        """Send every driver's events to `handler`, with the name of the event's host."""
        self._handler = handler
        self.local.listen(self._tagged(self.local_name))

    def _tagged(self, host: str) -> Callable[[VmEvent], Awaitable[None]]:
        async def forward(event: VmEvent) -> None:
            if self._handler is not None:
                await self._handler(host, event)

        return forward

    def names(self) -> set[str]:
        """The hosts with a driver here: this one, and those whose agent was reached."""
        return {self.local_name, *self.remote}

    def of(self, host: str) -> HypervisorDriver:
        """The driver of `host` ("" or this host's name: the local one); FullError naming the
        host when its agent is not connected (no room to run a VM there from here)."""
        if not host or host == self.local_name:
            return self.local
        driver = self.remote.get(host)
        if driver is None:
            raise FullError(f"Host {host} has no agent connected to this API node")
        return driver

    def all(self) -> list[HypervisorDriver]:
        return [self.local, *self.remote.values()]

    async def connect_agents(self, engine: Engine) -> list[str]:
        """Connect to the agent of every host whose row names one (not this host's); the names
        of those reached. One that cannot be reached is logged and left out."""
        if self.connector is None:
            return []
        with engine.connect() as connection:
            records = [
                r
                for r in host_store.list_hosts(connection)
                if r.agent and r.name != self.local_name and r.name not in self.remote
            ]
        reached = []
        for record in records:
            try:
                driver, closer, measure, network = await self.connector(
                    record.name, record.agent, self._tagged(record.name)
                )
            except HypervisorError as error:
                log.warning("event=host_agent_unreachable host=%s error=%s", record.name, error)
                continue
            self.remote[record.name] = driver
            self.networks[record.name] = network
            self._closers.append(closer)
            self._measures[record.name] = measure
            reached.append(record.name)
            log.info("event=host_agent_connected host=%s agent=%s", record.name, record.agent)
        return reached

    async def capacities(self, hosts: Collection[str]) -> dict[str, HostCapacity]:
        """What each host of `hosts` offers, as its agent measures it now (asked at once);
        a host whose agent does not answer is left out: it is not heartbeaten."""

        async def ask(host: str) -> tuple[str, HostCapacity | None]:
            measure = self._measures.get(host)
            if measure is None:
                return host, None
            try:
                return host, await measure()
            except HypervisorError as error:
                log.info("event=host_capacity_unanswered host=%s error=%s", host, error)
                return host, None

        answers = await asyncio.gather(*(ask(host) for host in hosts))
        return {host: capacity for host, capacity in answers if capacity is not None}

    async def close(self) -> None:
        """Close the agents' connections (their VMs run on, for the next daemon)."""
        for host, driver in self.remote.items():
            try:
                await driver.detach_all()
            except HypervisorError as error:  # an agent gone: nothing to let go of
                log.warning("event=host_agent_detach_failed host=%s error=%s", host, error)
        for closer in self._closers:
            await closer()
        self.remote.clear()
        self.networks.clear()
        self._closers.clear()
        self._measures.clear()
