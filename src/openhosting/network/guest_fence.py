"""The fence between user-mode guests and their host: an nftables rule on the host's own
traffic, matched by the account passt runs as.

passt opens the guest's connections as ordinary sockets of the host. `--no-map-gw` keeps the
guest's gateway from meaning the host's loopback, but a guest that is root in its VM can still
address 127.0.0.1 or any address of the host directly (`route_localnet`), and passt would
connect there. So every new connection or datagram that passt's account starts towards an
address of the host itself (`fib daddr type local`: loopback and every local address) is
refused, except DNS (port 53), which passt forwards to the host's resolver. The rest of the
world stays reachable. The table outlives the daemon, like the VMs it guards; each platform
of a host has its own (named after its run directory), so one platform going idle never takes
down another's.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from openhosting.network.nft import delete_if_present, run_nft

TABLE_PREFIX = "openhosting_guests_"
DNS_PORT = 53


def table_name(run_dir: Path) -> str:
    """The fence table of the platform whose user-mode network lives in `run_dir`."""
    return TABLE_PREFIX + hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]


def fence_ruleset(table: str, uid: int) -> str:
    """The table refusing account `uid` any new flow to the host itself but DNS (pure).

    The table is deleted first (in the same transaction) so a changed account replaces the
    old rule instead of adding a second one."""
    return f"""\
table inet {table}
delete table inet {table}
table inet {table} {{
  chain output {{
    type filter hook output priority 0; policy accept;
    meta skuid {uid} ct state new th dport != {DNS_PORT} fib daddr type local reject
    meta skuid {uid} ct state new oif "lo" th dport != {DNS_PORT} reject
  }}
}}
"""


class GuestFence:
    """The fence in one network namespace (`""`: the host's)."""

    def __init__(self, table: str, namespace: str = "") -> None:
        self._table, self._namespace = table, namespace
        self._lock = asyncio.Lock()
        # The application of the fence that callers of `ensure` arriving now will share, by
        # account: it has not begun yet (it waits for the lock).
        self._next: dict[int, asyncio.Task[None]] = {}

    async def _nft(self, *args: str, stdin: str | None = None) -> str:
        return await run_nft(self._namespace, *args, stdin=stdin)

    async def ensure(self, uid: int) -> None:
        """Fence account `uid` off the host (idempotent): returns once the fence was applied
        by an `nft` run that began after this call did.

        Every server start asks for it: callers arriving together share one run instead of
        queueing one run each behind the lock (16 starts at once: 2 runs, not 16 in a row)."""
        applying = self._next.get(uid)
        if applying is None:
            applying = asyncio.create_task(self._apply(uid))
            self._next[uid] = applying
        # Shielded: a caller that gives up must not cancel the run the others wait for.
        await asyncio.shield(applying)

    async def _apply(self, uid: int) -> None:
        async with self._lock:
            # Begun: whoever asks from now on may have missed it, and gets the next run.
            if self._next.get(uid) is asyncio.current_task():
                del self._next[uid]
            await self._nft("-f", "-", stdin=fence_ruleset(self._table, uid))

    async def remove(self) -> None:
        """Take the fence down (no guest runs any more); idempotent."""
        async with self._lock:
            await delete_if_present(self._nft, "table", "inet", self._table)
