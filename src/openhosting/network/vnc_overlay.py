"""VNC on a server's own public address, in bridge mode: the service's "overlay" of port 5900.

QEMU's VNC server listens on the host's address on the public bridge; a client connecting to
a guest's address on port 5900 is sent there instead. Frames for a guest's address are bridged
straight to the guest and never reach the host's IP stack, so an nftables `bridge` rule
re-addresses those to the bridge itself (to the host), and an `ip` NAT rule then forwards them
to the server's VNC port. Guests and their targets are elements of a set and a map: adding or
removing a server changes no rule.
"""

import asyncio
import json
import re

from openhosting.network.links import ip_argv, run_command
from openhosting.network.nft import delete_if_present, run_nft
from openhosting.vnc.ports import VNC_BASE_PORT

TABLE_PREFIX = "openhosting_vnc_"


def table_name(bridge: str) -> str:
    """The overlay's tables for the public bridge `bridge`: one pair per bridge, so platforms
    on different bridges of one namespace keep to their own (nft names allow no `-`)."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


def overlay_ruleset(table: str, bridge_mac: str) -> str:
    """The two tables (pure): the guests whose port 5900 is ours, and where each goes."""
    return f"""\
table bridge {table} {{
  set guests {{ type ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr @guests tcp dport {VNC_BASE_PORT} ether daddr set {bridge_mac} meta pkttype set host
  }}
}}
table ip {table} {{
  map targets {{ type ipv4_addr : ipv4_addr . inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    tcp dport {VNC_BASE_PORT} dnat ip to ip daddr map @targets
  }}
}}
"""


class VncOverlay:
    """The overlay's rules in one namespace, for one public bridge."""

    def __init__(self, namespace: str, bridge: str) -> None:
        self._namespace, self._bridge = namespace, bridge
        self._table = table_name(bridge)
        self._lock = asyncio.Lock()

    async def _nft(self, *args: str, stdin: str | None = None) -> str:
        return await run_nft(self._namespace, *args, stdin=stdin)

    async def ensure(self) -> None:
        """Create the tables once (they outlive the daemon, like the bridge)."""
        async with self._lock:
            tables = await self._nft("list", "tables")
            listed = tables.splitlines()
            if f"table ip {self._table}" in listed and f"table bridge {self._table}" in listed:
                return
            shown = await run_command(ip_argv(self._namespace, "-j", "link", "show", self._bridge))
            mac = json.loads(shown)[0]["address"]
            await self._nft("-f", "-", stdin=overlay_ruleset(self._table, mac))

    async def open(self, guest: str, target: str, port: int) -> None:
        """Send `guest`:5900 to `target`:`port`."""
        await self.ensure()
        await self._nft("add", "element", "bridge", self._table, "guests", f"{{ {guest} }}")
        await self.close(guest, only_target=True)
        await self._nft(
            "add", "element", "ip", self._table, "targets", f"{{ {guest} : {target} . {port} }}"
        )

    async def close(self, guest: str, only_target: bool = False) -> None:
        """Stop sending `guest`:5900 anywhere; idempotent."""
        places = [("ip", "targets")] if only_target else [("ip", "targets"), ("bridge", "guests")]
        for family, name in places:
            await delete_if_present(
                self._nft, "element", family, self._table, name, f"{{ {guest} }}"
            )

    async def remove(self) -> None:
        """Remove both tables (the daemon stops with no server running)."""
        for family in ("bridge", "ip"):
            await delete_if_present(self._nft, "table", family, self._table)
