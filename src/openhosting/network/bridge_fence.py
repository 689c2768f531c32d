"""The fence between bridge-mode guests and their host: what a guest may ask of the host
itself is DHCP, VNC and ping, nothing else.

A guest on a bridge reaches the host's IP stack like any machine of the pool, so without a
rule every host service listening on all addresses (or on the host's bridge address) is
open to it, past whatever guards the uplink. Frames that come in through one of our taps are
marked in the `bridge` family (where the port is known); the `inet` input hook, which sees
only what is addressed to the host itself (routed traffic takes the forward hook), then lets
marked packets through only to DHCP, the VNC ports and ping, and of the rest of ICMPv6 only
neighbour discovery's solicitations and advertisements: a router advertisement from a guest
gave the host a default route through that guest (and an address in its prefix), on the
public bridge and on a VLAN's, whose guests the spoof guard leaves alone. Outside clients
(through the uplink) and the host's own traffic carry no mark and are left alone.

A VLAN is private: the host has no address on its bridge, yet where it forwards (it routes
for the pool) a VLAN guest could send to that bridge's MAC and have the host route its
packets to the public network or beyond, from any source address (the spoof guard leaves
VLAN NICs alone): nothing that comes in by a VLAN's bridge is routed out of it. (Where the
kernel passes bridged frames to the IP hooks too, br_netfilter's bridge-nf-call-iptables,
the forward hook sees a VLAN's own traffic as from and to its bridge: that is left alone.)
One pair
of tables per public bridge, like the VNC overlay's; they outlive the daemon with the taps
they guard.
"""

import asyncio
import re

from openhosting.network.nft import delete_if_present, run_nft
from openhosting.vnc.ports import VNC_BASE_PORT, VNC_DISPLAYS

TABLE_PREFIX = "openhosting_fence_"
# The mark of packets that came from a guest's tap (bits of ours, kept apart from others').
GUEST_MARK = 0x6F680000
DHCP_SERVER_PORT = 67


def table_name(bridge: str) -> str:
    """The fence's tables for the public bridge `bridge` (nft names allow no `-`)."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


def fence_ruleset(table: str, tap_prefix: str, vlan_prefix: str) -> str:
    """Both tables (pure): mark what comes from taps, refuse it the host but DHCP, VNC, ping;
    route nothing that comes from a VLAN's bridge.

    Loaded again it replaces the tables (each is deleted first in the same transaction)."""
    last_vnc = VNC_BASE_PORT + VNC_DISPLAYS - 1
    return f"""\
table bridge {table}
delete table bridge {table}
table inet {table}
delete table inet {table}
table bridge {table} {{
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname "{tap_prefix}*" meta mark set meta mark | {GUEST_MARK:#x}
  }}
}}
table inet {table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    meta mark & {GUEST_MARK:#x} != {GUEST_MARK:#x} accept
    ct state established,related accept
    udp dport {DHCP_SERVER_PORT} accept
    tcp dport {VNC_BASE_PORT}-{last_vnc} accept
    icmp type echo-request accept
    icmpv6 type {{ echo-request, nd-neighbor-solicit, nd-neighbor-advert }} accept
    reject
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{vlan_prefix}*" oifname != "{vlan_prefix}*" drop
  }}
}}
"""


class BridgeFence:
    """The fence's tables in one namespace, for one public bridge."""

    def __init__(self, namespace: str, bridge: str, tap_prefix: str, vlan_prefix: str) -> None:
        self._namespace = namespace
        self._table = table_name(bridge)
        self._tap_prefix, self._vlan_prefix = tap_prefix, vlan_prefix
        self._lock = asyncio.Lock()

    async def _nft(self, *args: str, stdin: str | None = None) -> str:
        return await run_nft(self._namespace, *args, stdin=stdin)

    async def ensure(self) -> None:
        """Put the tables in place (idempotent: reloading replaces them)."""
        async with self._lock:
            await self._nft(
                "-f", "-", stdin=fence_ruleset(self._table, self._tap_prefix, self._vlan_prefix)
            )

    async def remove(self) -> None:
        """Remove both tables (the daemon stops with no server running); idempotent."""
        async with self._lock:
            for family in ("bridge", "inet"):
                await delete_if_present(self._nft, "table", family, self._table)
