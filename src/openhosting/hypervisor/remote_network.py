"""The network driver of another host: each call made to that host's agent
(`/network/{method}`, hypervisor/network_calls.py) over the connection of its
`RemoteHypervisorDriver`, so the NICs of a VM that runs there are made there: its taps on that
host's bridges, its DHCP from that host's dnsmasq, its blocked ports in that host's nftables.
The addresses still come from the one pool in the database (services/servers/server_network.py picks
them; the agent's driver only serves them).

What the interface asks synchronously (`guest_address`, the attributes) is answered from the
facts read at `connect`. `close` does nothing: the host's links belong to its agent, which
keeps them for the running VMs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from openhosting.hypervisor.calls import NoArguments
from openhosting.hypervisor.network_calls import (
    AddressCall,
    AddressVncCall,
    GuestCall,
    GuestVncCall,
    MacsCall,
    NetworkFacts,
    NicCall,
    NicsCall,
    PeersCall,
    ReconcileCall,
)
from openhosting.network.driver import Backend, NicPlan
from openhosting.network.links import Counters

# (method, request record) → the decoded answer: `RemoteHypervisorDriver.network_call`.
NetworkCaller = Callable[[str, object], Awaitable[Any]]


class RemoteNetworkDriver:
    """The network of host `host`, through `call`; a `NetworkDriver` once `connect` has
    returned."""

    def __init__(self, host: str, call: NetworkCaller) -> None:
        self.host = host
        self._call = call
        self.mode = "user"
        self.namespace = ""
        self.pool_for_auto = False
        self.vnc_address: str | None = None
        self._default_guest_address: str | None = None
        self._started = False

    async def connect(self) -> None:
        """Read what the host's driver is (its mode, namespace, VNC address)."""
        facts: NetworkFacts = await self._call("settings", NoArguments())
        self.mode, self.namespace = facts.mode, facts.namespace
        self.pool_for_auto, self.vnc_address = facts.pool_for_auto, facts.vnc_address
        self._default_guest_address = facts.default_guest_address

    def guest_address(self, nic: NicPlan) -> str | None:
        return nic.address or self._default_guest_address

    async def start(self) -> None:
        if not self._started:
            await self._call("start", NoArguments())
            self._started = True

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        pairs: tuple[tuple[int, Backend], ...] = await self._call("attach", NicsCall(tuple(nics)))
        return dict(pairs)

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        await self._call("detach", NicsCall(tuple(nics)))

    async def block(self, nic: NicPlan) -> None:
        await self._call("block", NicCall(nic))

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        counters: Counters = await self._call("counters", NicsCall(tuple(nics)))
        return counters

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        await self._call("reconcile", ReconcileCall(tuple(active)))

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        lists = None if peers is None else {vlan: tuple(each) for vlan, each in peers.items()}
        await self._call("set_vxlan_peers", PeersCall(lists))

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        entries = {vlan: dict(each) for vlan, each in macs.items()}
        await self._call("set_vxlan_macs", MacsCall(entries))

    async def keep_helpers_running(self) -> None:
        await self._call("keep_helpers_running", NoArguments())

    async def open_vnc(self, guest: str, port: int) -> bool:
        opened: bool = await self._call("open_vnc", GuestVncCall(guest, port))
        return opened

    async def close_vnc(self, guest: str) -> None:
        await self._call("close_vnc", GuestCall(guest))

    async def open_vnc_address(self, address: str, port: int) -> bool:
        opened: bool = await self._call("open_vnc_address", AddressVncCall(address, port))
        return opened

    async def close_vnc_address(self, address: str) -> None:
        await self._call("close_vnc_address", AddressCall(address))

    async def close(self, idle: bool) -> None:
        return None  # the agent's: its links outlive this control plane
