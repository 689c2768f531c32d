"""The network driver's calls as plain data: what the control plane asks of the
`NetworkDriver` (network/driver.py) of an agent's host for the NICs of the servers whose VMs
run there, in the wire style of the hypervisor driver's calls (hypervisor/calls.py encodes
and decodes them; agent/server.py serves them on `/network/{method}`,
hypervisor/remote_network.py makes them).

A request record's fields are the method's parameters by name. Every NIC's server must be a
server's UUID, its MAC a MAC, its VLAN a UUID and its address an IPv4 address: they become
interface names, nftables rules and DHCP entries on the agent's host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from openhosting.hypervisor.calls import Call, CallError, NoArguments, check_server
from openhosting.network.driver import NicPlan
from openhosting.network.links import Counters
from openhosting.network.netdevs import Netdev

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _check_address(address: str) -> None:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise CallError(f"not an IPv4 address: {address[:80]!r}") from None


def _check_nic(nic: NicPlan) -> None:
    check_server(nic.server)
    if nic.vlan is not None:
        check_server(nic.vlan)  # a VLAN is named by its UUID too
    if not _MAC.fullmatch(nic.mac):
        raise CallError(f"not a MAC: {nic.mac[:80]!r}")
    if nic.address is not None:
        _check_address(nic.address)


@dataclass(frozen=True)
class NetworkFacts:
    """The `settings` answer: the driver's attributes, read once when the control plane
    connects. `default_guest_address`: what the guest gets on a NIC with no address of its
    own (user mode's QEMU address; None in bridge mode)."""

    mode: str
    namespace: str
    pool_for_auto: bool
    vnc_address: str | None
    default_guest_address: str | None


@dataclass(frozen=True)
class NicsCall:
    """`attach`, `detach`, `counters`: the NICs of one server."""

    nics: tuple[NicPlan, ...]

    def __post_init__(self) -> None:
        for nic in self.nics:
            _check_nic(nic)


@dataclass(frozen=True)
class ReconcileCall:
    active: tuple[NicPlan, ...]

    def __post_init__(self) -> None:
        for nic in self.active:
            _check_nic(nic)


@dataclass(frozen=True)
class NicCall:
    """`block`: one attached NIC and the ports it blocks now."""

    nic: NicPlan

    def __post_init__(self) -> None:
        _check_nic(self.nic)


@dataclass(frozen=True)
class MacsCall:
    """`set_vxlan_macs`: each VLAN's guests on other hosts by VLAN UUID, MAC → address."""

    macs: dict[str, dict[str, str]]

    def __post_init__(self) -> None:
        for vlan, entries in self.macs.items():
            check_server(vlan)  # a VLAN is named by its UUID
            for mac, address in entries.items():
                if not _MAC.fullmatch(mac):
                    raise CallError(f"not a MAC: {mac[:80]!r}")
                _check_address(address)


@dataclass(frozen=True)
class PeersCall:
    """`set_vxlan_peers`: each VLAN's flood list by VLAN UUID, or None (the configured)."""

    peers: dict[str, tuple[str, ...]] | None

    def __post_init__(self) -> None:
        for vlan, peers in (self.peers or {}).items():
            check_server(vlan)  # a VLAN is named by its UUID
            for peer in peers:
                _check_address(peer)


@dataclass(frozen=True)
class GuestVncCall:
    guest: str
    port: int

    def __post_init__(self) -> None:
        _check_address(self.guest)


@dataclass(frozen=True)
class GuestCall:
    guest: str

    def __post_init__(self) -> None:
        _check_address(self.guest)


@dataclass(frozen=True)
class AddressVncCall:
    address: str
    port: int

    def __post_init__(self) -> None:
        _check_address(self.address)


@dataclass(frozen=True)
class AddressCall:
    address: str

    def __post_init__(self) -> None:
        _check_address(self.address)


# Every method of `NetworkDriver` but `guest_address` (answered from `NetworkFacts`) and
# `close` (the agent's own: its host's links outlive a control plane), and `settings`.
NETWORK_CALLS: Mapping[str, Call] = {
    "settings": Call(NoArguments, NetworkFacts),
    "start": Call(NoArguments, None),
    # The backends by NIC index, as pairs (JSON objects have only text keys).
    "attach": Call(NicsCall, tuple[tuple[int, Netdev], ...]),
    "detach": Call(NicsCall, None),
    "block": Call(NicCall, None),
    "counters": Call(NicsCall, Counters),
    "reconcile": Call(ReconcileCall, None),
    "set_vxlan_peers": Call(PeersCall, None),
    "set_vxlan_macs": Call(MacsCall, None),
    "keep_helpers_running": Call(NoArguments, None),
    "open_vnc": Call(GuestVncCall, bool),
    "close_vnc": Call(GuestCall, None),
    "open_vnc_address": Call(AddressVncCall, bool),
    "close_vnc_address": Call(AddressCall, None),
}
