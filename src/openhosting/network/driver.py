"""What the servers service asks of the network, whatever the mode: NICs in, QEMU backends
out, counters, and tidying up.

`NicPlan` is a NIC as the network sees it (a MAC on the public network or on a VLAN, maybe
with an address to offer); who owns it and why is the service's business. The two drivers are
`user_mode.UserNetwork` (one passt per NIC, fenced off from the host) and
`bridge_mode.BridgeNetwork` (bridges, taps and dnsmasq, optionally in a namespace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from openhosting.model.port_block import BlockedPorts
from openhosting.network.links import Counters
from openhosting.network.netdevs import Netdev

Backend = Netdev


@dataclass(frozen=True)
class NicPlan:
    """NIC `index` of `server`: its MAC, its VLAN (None: the public network), the
    address DHCP offers it (None: none in bridge mode; user mode's own with `dhcp`) and the
    inbound ports blocked on it. `dhcp` False: the configuration asks for no address
    (`nic:N:dhcp` unset), so no DHCP server answers the NIC in any mode."""

    server: str
    index: int
    mac: str
    vlan: str | None = None
    address: str | None = None
    block: tuple[BlockedPorts, ...] = ()
    dhcp: bool = True
    # The VLAN's VXLAN network identifier (the database's); None: the hash of its UUID.
    vni: int | None = None


class NetworkDriver(Protocol):
    """One networking mode of a host."""

    mode: str
    # The network namespace QEMU must run in ("" for the host's own).
    namespace: str
    # Whether `nic:0:dhcp auto` takes a temporary address from the pool (bridge mode), or the
    # mode gives the guest one of its own (user mode: `guest_address`).
    pool_for_auto: bool
    # Where VNC servers listen in this mode; None: the hypervisor's own setting.
    vnc_address: str | None

    def guest_address(self, nic: NicPlan) -> str | None:
        """The address the guest gets on `nic` when it asks DHCP (None: none offered)."""
        ...

    async def start(self) -> None:
        """Set up what every server needs (bridges, the DHCP server); idempotent."""
        ...

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        """Make the NICs of one server ready to start (their blocked ports in force before
        the guest runs); their QEMU backends by index. Undone by itself if it fails half-way."""
        ...

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        """Remove what `attach` made for these NICs; idempotent."""
        ...

    async def block(self, nic: NicPlan) -> None:
        """Make `nic.block` the inbound ports blocked on an attached NIC, at once."""
        ...

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        """Traffic of these NICs from the guest's point of view (rx: what the guest got)."""
        ...

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        """After a daemon restart: keep what `active` NICs use (their blocked ports as they
        say), remove every other thing of ours (taps and entries of servers that ended
        meanwhile, idle VLAN bridges)."""
        ...

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        """Each VLAN's flood list: VLAN UUID → the other hosts' underlay addresses its
        broadcast and unknown frames go to (the hosts running one of its servers; empty:
        none), at once for the VLANs running here whose list changed. A VLAN not named keeps
        its list; None: every VLAN floods to the configured `network.vxlan_peers`. Nothing
        where VLANs do not cross hosts."""
        ...

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        """Each VLAN's guests on other hosts: VLAN UUID → {MAC: the underlay address of its
        host}, so that a frame for one of them goes to its host alone, not to the VLAN's
        whole flood list; at once for the VLANs running here whose entries changed. A VLAN
        not named keeps its entries. Nothing where VLANs do not cross hosts."""
        ...

    async def keep_helpers_running(self) -> None:
        """Start again a helper process of running servers' NICs that died (bridge mode:
        the DHCP server, which a running guest needs to renew its lease); idempotent."""
        ...

    async def open_vnc(self, guest: str, port: int) -> bool:
        """Make `guest`:5900 reach the VNC server on `vnc_address`:`port`; False when this
        mode cannot (user mode: the guest's address is QEMU's private one)."""
        ...

    async def close_vnc(self, guest: str) -> None:
        """Undo `open_vnc`; idempotent."""
        ...

    async def open_vnc_address(self, address: str, port: int) -> bool:
        """Make `address`:5900, an address no guest holds, reach the VNC server on
        `vnc_address`:`port` (the host takes the address); False when this mode cannot."""
        ...

    async def close_vnc_address(self, address: str) -> None:
        """Undo `open_vnc_address`; idempotent."""
        ...

    async def close(self, idle: bool) -> None:
        """The daemon stops. When `idle` (no server runs) remove everything of ours; else
        leave it all to the running servers and the next daemon."""
        ...
