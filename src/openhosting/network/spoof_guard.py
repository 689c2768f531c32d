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
lease). A NIC without an address keeps the MAC rules (docs/networking.md: the guest may set
its own address). VLAN NICs are left alone: a VLAN is one user's own network.

One table per platform, one chain per guarded tap, found through a verdict map of taps
(tap_chains.py, as nic_firewall.py's); it outlives the daemon with the taps it guards. Each
change is one `nft -f` transaction.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from openhosting.network import tap_chains
from openhosting.network.tap_chains import TapChains, identifier
from openhosting.network.tap_chains import chain_name as chain_name

TABLE_PREFIX = "openhosting_guard_"
DHCP_CLIENT_PORT, DHCP_SERVER_PORT = 68, 67


@dataclass(frozen=True)
class GuestIdentity:
    """What a guest may send as on one NIC: its MAC and, if it has one, its address."""

    mac: str
    address: str | None


def table_name(bridge: str) -> str:
    """The table of the platform whose public bridge is `bridge` (nft names allow no `-`)."""
    return TABLE_PREFIX + identifier(bridge)


def guard_rules(identity: GuestIdentity) -> list[str]:
    """The rules of one tap's chain (pure): what drops a frame not sent as `identity`."""
    mac = identity.mac.lower()
    rules = [
        f"ether saddr != {mac} drop",
        f"arp saddr ether != {mac} drop",
        # A DHCP message names its client by the BOOTP chaddr (bytes 28-33 of the message,
        # after the 8 bytes of UDP header), which dnsmasq believes: another guest's there, a
        # DHCPDECLINE disabled that guest's address for 10 minutes, a DHCPRELEASE ended its
        # lease.
        f"udp dport {DHCP_SERVER_PORT} @th,288,48 != 0x{mac.replace(':', '')} drop",
    ]
    if identity.address is not None:
        address = identity.address
        # 0.0.0.0: an ARP probe (RFC 5227) before the address is used, and DHCP's requests.
        rules += [
            f"arp saddr ip != {{ 0.0.0.0, {address} }} drop",
            f"ip saddr 0.0.0.0 udp sport {DHCP_CLIENT_PORT} udp dport {DHCP_SERVER_PORT} accept",
            f"ip saddr != {address} drop",
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
