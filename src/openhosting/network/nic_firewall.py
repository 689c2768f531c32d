"""`nic:N:block` in bridge mode: inbound ports of a guest refused on its tap.

Every frame a guest receives leaves the bridge through its tap: from the uplink or another
guest through the `bridge` family's forward hook, from the host itself (its own or routed
traffic) through the output hook. Both look the outgoing port up in a verdict map of taps and
jump to that tap's chain, which drops what is addressed to a blocked port. Frames the guest
sends are never looked at, so its outbound traffic is untouched.

This kernel has no connection tracking and no `reject` in the `bridge` family, so the rules
are stateless and drop: for TCP only a connection's opening segment (SYN without ACK) is
dropped, so a guest's own connections out from a port in a blocked range still get their
answers; UDP has no such marker, and every datagram to a blocked UDP port is dropped.

One table per platform (named after its public bridge: it also covers the taps on VLAN
bridges), one chain per tap (tap_chains.py); the tables and chains outlive the daemon with
the taps they guard. Each change is one `nft -f` transaction.
"""

from collections.abc import Mapping

from openhosting.model.port_block import BlockedPorts, port_intervals
from openhosting.network import tap_chains
from openhosting.network.tap_chains import TapChains, identifier
from openhosting.network.tap_chains import chain_name as chain_name

TABLE_PREFIX = "openhosting_block_"


def table_name(bridge: str) -> str:
    """The table of the platform whose public bridge is `bridge` (nft names allow no `-`)."""
    return TABLE_PREFIX + identifier(bridge)


def _set_text(intervals: list[tuple[int, int]]) -> str:
    items = (str(a) if a == b else f"{a}-{b}" for a, b in intervals)
    return "{ " + ", ".join(items) + " }"


def tap_rules(entries: tuple[BlockedPorts, ...]) -> list[str]:
    """The rules of one tap's chain (pure): what drops the blocked ports."""
    rules: list[str] = []
    tcp, udp = port_intervals(entries, "tcp"), port_intervals(entries, "udp")
    if tcp:
        rules.append(f"tcp dport {_set_text(tcp)} tcp flags & (syn | ack) == syn drop")
    if udp:
        rules.append(f"udp dport {_set_text(udp)} drop")
    return rules


def _hooks(table: str) -> str:
    return f"""\
add map bridge {table} taps {{ type ifname : verdict; }}
add chain bridge {table} forward {{ type filter hook forward priority 0; policy accept; }}
add chain bridge {table} output {{ type filter hook output priority 0; policy accept; }}
flush chain bridge {table} forward
flush chain bridge {table} output
add rule bridge {table} forward oifname vmap @taps
add rule bridge {table} output oifname vmap @taps
"""


def tap_ruleset(table: str, tap: str, entries: tuple[BlockedPorts, ...]) -> str:
    """One transaction (pure) making `tap`'s blocked ports `entries` (none: its chain goes);
    the table and its hooks are made first if missing, other taps' chains are kept."""
    return tap_chains.tap_ruleset(table, _hooks(table), tap, tap_rules(entries))


def full_ruleset(table: str, taps: Mapping[str, tuple[BlockedPorts, ...]]) -> str:
    """One transaction (pure) replacing the whole table: exactly `taps` blocked."""
    rules = {tap: tap_rules(entries) for tap, entries in taps.items()}
    return tap_chains.full_ruleset(table, _hooks(table), rules)


def remove_tap_ruleset(table: str, tap: str) -> str:
    """One transaction (pure) removing `tap`'s chain; idempotent."""
    return tap_chains.remove_tap_ruleset(table, _hooks(table), tap)


class NicFirewall:
    """The blocked ports of the taps of one platform, in one namespace."""

    def __init__(self, namespace: str, bridge: str) -> None:
        table = table_name(bridge)
        self._chains = TapChains(namespace, table, _hooks(table))

    async def block(self, tap: str, entries: tuple[BlockedPorts, ...]) -> None:
        """Make `entries` the blocked ports of `tap` (none: nothing blocked)."""
        await self._chains.set(tap, tap_rules(entries))

    async def unblock(self, tap: str) -> None:
        """Forget `tap` (it is gone); idempotent."""
        await self._chains.unset(tap)

    async def replace_all(self, taps: Mapping[str, tuple[BlockedPorts, ...]]) -> None:
        """Exactly `taps` blocked: after a daemon restart, what running servers ask."""
        await self._chains.replace_all({tap: tap_rules(e) for tap, e in taps.items()})

    async def remove(self) -> None:
        """Remove the table (the daemon stops with no server running); idempotent."""
        await self._chains.remove()
