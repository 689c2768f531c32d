"""Bridge mode: a guest on the public bridge sends only as itself, its NIC's MAC and address.

The public bridge carries every tenant's guests on one L2 segment. Without a rule a guest
could send frames from another guest's MAC (the bridge would then deliver that guest's frames
to it), speak DHCP in another guest's name, answer ARP for another guest's address (its
traffic diverted, a man in the middle) or send IP from an address that is not its own. Each
frame that comes in through the tap of a public NIC is looked at in the `bridge` family's
prerouting hook, before the bridge learns its source: its Ethernet source, an ARP's sender
hardware address and a DHCP message's client hardware address (chaddr) must be the NIC's
MAC; a NIC with an address (`nic:0:dhcp`) may claim only that address in ARP and send IPv4
only from it, and from 0.0.0.0 only to the DHCP server's port (a client asking for its
lease). A NIC without an address has no IPv4 address there: it may claim none in ARP (but
0.0.0.0, a probe) and send IPv4 from none.

Beyond IPv4: only IPv4, ARP and IPv6 frames pass (a VLAN tag would reach the provider's
VLANs through the uplink's trunk, a BPDU its spanning tree). The platform hands out no IPv6
address, so a guest's one IPv6 address is its MAC's link-local (EUI-64): it sends IPv6 only
from it (or from ::, detecting a duplicate of it), and its neighbour advertisements claim only
it. No guest is a router or a DHCP server of the bridge: its router advertisements, redirects
and listener queries are dropped, and so is anything sent to a DHCP client's port (v4 and
v6), which only a server's answer is.

VLAN NICs are left alone: a VLAN is one user's own network, where their servers may use any
address and one of them may be the others' router or DHCP server; what a VLAN guest may ask
of the host is bridge_fence.py's.

One table per platform, one chain per guarded tap, found through a verdict map of taps
(tap_chains.py, as nic_firewall.py's); it outlives the daemon with the taps it guards. Each
change is one `nft -f` transaction.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv6Address

from openhosting.network import tap_chains
from openhosting.network.tap_chains import TapChains, identifier
from openhosting.network.tap_chains import chain_name as chain_name

TABLE_PREFIX = "openhosting_guard_"
DHCP_CLIENT_PORT, DHCP_SERVER_PORT = 68, 67
DHCPV6_CLIENT_PORT = 546
# What only a router sends: advertisements (a default route, prefixes), redirects, router
# renumbering, and multicast listener queries.
ROUTER_MESSAGES = "nd-router-advert, nd-redirect, router-renumbering, mld-listener-query"


@dataclass(frozen=True)
class GuestIdentity:
    """What a guest may send as on one NIC: its MAC and, if it has one, its address."""

    mac: str
    address: str | None


def table_name(bridge: str) -> str:
    """The table of the platform whose public bridge is `bridge` (nft names allow no `-`)."""
    return TABLE_PREFIX + identifier(bridge)


def link_local(mac: str) -> str:
    """The IPv6 link-local address made of `mac` (modified EUI-64, RFC 4291 appendix A)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    interface = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(IPv6Address(b"\xfe\x80" + bytes(6) + interface))


def guard_rules(identity: GuestIdentity) -> list[str]:
    """The rules of one tap's chain (pure): what drops a frame not sent as `identity`."""
    mac = identity.mac.lower()
    own = link_local(mac)
    own_bits = f"0x{int(IPv6Address(own)):032x}"
    rules = [
        f"ether saddr != {mac} drop",
        "ether type != { ip, arp, ip6 } drop",
        f"arp saddr ether != {mac} drop",
        # A DHCP message names its client by the BOOTP chaddr (bytes 28-33 of the message,
        # after the 8 bytes of UDP header), which dnsmasq believes: another guest's there, a
        # DHCPDECLINE disabled that guest's address for 10 minutes, a DHCPRELEASE ended its
        # lease.
        f"udp dport {DHCP_SERVER_PORT} @th,288,48 != 0x{mac.replace(':', '')} drop",
        f"udp dport {{ {DHCP_CLIENT_PORT}, {DHCPV6_CLIENT_PORT} }} drop",
        f"ip6 saddr != {{ ::, {own} }} drop",
        f"icmpv6 type {{ {ROUTER_MESSAGES} }} drop",
        # The target address (bytes 8-23 of the message): the address advertised, or the one
        # a duplicate address detection (from ::) is about.
        f"icmpv6 type nd-neighbor-advert @th,64,128 != {own_bits} drop",
        f"ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != {own_bits} drop",
    ]
    # 0.0.0.0: an ARP probe (RFC 5227) before the address is used, and DHCP's requests.
    # Without an address of its own a NIC has none on the public network: any it took would be
    # another machine's (a guest's, the gateway's) or one the pool hands out next.
    claimable = "0.0.0.0" if identity.address is None else f"{{ 0.0.0.0, {identity.address} }}"
    rules += [
        f"arp saddr ip != {claimable} drop",
        f"ip saddr 0.0.0.0 udp sport {DHCP_CLIENT_PORT} udp dport {DHCP_SERVER_PORT} accept",
        f"ip saddr != {identity.address or '0.0.0.0'} drop",
    ]
    return rules


def _hooks(table: str) -> str:
    # Priority -300: before the bridge's own processing, so no rule of another table sees a
    # forged frame first.
    return f"""\
add map bridge {table} taps {{ type ifname : verdict; }}
add chain bridge {table} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
flush chain bridge {table} prerouting
add rule bridge {table} prerouting iifname vmap @taps
"""


def tap_ruleset(table: str, tap: str, identity: GuestIdentity) -> str:
    """One transaction (pure) guarding `tap` as `identity`; the table and its hook are made
    first if missing, other taps' chains are kept."""
    return tap_chains.tap_ruleset(table, _hooks(table), tap, guard_rules(identity))


def full_ruleset(table: str, taps: Mapping[str, GuestIdentity]) -> str:
    """One transaction (pure) replacing the whole table: exactly `taps` guarded."""
    rules = {tap: guard_rules(identity) for tap, identity in taps.items()}
    return tap_chains.full_ruleset(table, _hooks(table), rules)


def remove_tap_ruleset(table: str, tap: str) -> str:
    """One transaction (pure) removing `tap`'s chain; idempotent."""
    return tap_chains.remove_tap_ruleset(table, _hooks(table), tap)


class SpoofGuard:
    """The guarded taps of one platform, in one namespace."""

    def __init__(self, namespace: str, bridge: str) -> None:
        table = table_name(bridge)
        self._chains = TapChains(namespace, table, _hooks(table))

    async def guard(self, tap: str, identity: GuestIdentity) -> None:
        """Let `tap` carry only frames sent as `identity`."""
        await self._chains.set(tap, guard_rules(identity))

    async def unguard(self, tap: str) -> None:
        """Forget `tap` (it is gone); idempotent."""
        await self._chains.unset(tap)

    async def replace_all(self, taps: Mapping[str, GuestIdentity]) -> None:
        """Exactly `taps` guarded: after a daemon restart, the running servers' NICs."""
        await self._chains.replace_all({tap: guard_rules(i) for tap, i in taps.items()})

    async def remove(self) -> None:
        """Remove the table (the daemon stops with no server running); idempotent."""
        await self._chains.remove()
