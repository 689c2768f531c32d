"""A `bridge` table of one chain per tap, found through a verdict map of taps: the layout of
the per-NIC rules of bridge mode (nic_firewall.py's blocked ports, spoof_guard.py's guard).

The table's hooks (which hook, matching the tap as the frame's way in or out) are the
caller's; the map `taps` sends a frame to its tap's chain, whose rules are the caller's too.
Every change is one `nft -f` transaction, written here as text by pure functions: a tap's
chain set or removed (the table and its hooks made first if missing, other taps' chains
kept), or the whole table replaced. The tables and chains outlive the daemon with the taps.
"""

import asyncio
import re
from collections.abc import Mapping, Sequence

from openhosting.network.nft import delete_if_present, run_nft

TAPS_MAP = "taps"


def identifier(name: str) -> str:
    """`name` as nft allows it in a table's or chain's name (no `-`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def chain_name(tap: str) -> str:
    return "tap_" + identifier(tap)


def _remove_tap(table: str, tap: str) -> str:
    # Made first so that deleting never fails on what is not there (one transaction).
    chain = chain_name(tap)
    return f"""\
add chain bridge {table} {chain}
add element bridge {table} {TAPS_MAP} {{ "{tap}" : jump {chain} }}
delete element bridge {table} {TAPS_MAP} {{ "{tap}" }}
delete chain bridge {table} {chain}
"""


def _set_tap(table: str, tap: str, rules: Sequence[str]) -> str:
    if not rules:
        return _remove_tap(table, tap)
    chain = chain_name(tap)
    lines = [f"add chain bridge {table} {chain}", f"flush chain bridge {table} {chain}"]
    lines += [f"add rule bridge {table} {chain} {rule}" for rule in rules]
    lines.append(f'add element bridge {table} {TAPS_MAP} {{ "{tap}" : jump {chain} }}')
    return "\n".join(lines) + "\n"


def tap_ruleset(table: str, hooks: str, tap: str, rules: Sequence[str]) -> str:
    """One transaction (pure) making `rules` the chain of `tap` (none: its chain goes); the
    table and its `hooks` are made first if missing, other taps' chains are kept."""
    return f"add table bridge {table}\n" + hooks + _set_tap(table, tap, rules)


def remove_tap_ruleset(table: str, hooks: str, tap: str) -> str:
    """One transaction (pure) removing `tap`'s chain; idempotent."""
    return f"add table bridge {table}\n" + hooks + _remove_tap(table, tap)


def full_ruleset(table: str, hooks: str, taps: Mapping[str, Sequence[str]]) -> str:
    """One transaction (pure) replacing the whole table: exactly the chains of `taps` (a tap
    with no rules has none)."""
    text = f"table bridge {table}\ndelete table bridge {table}\nadd table bridge {table}\n"
    text += hooks
    for tap in sorted(taps):
        if taps[tap]:
            text += _set_tap(table, tap, taps[tap])
    return text


class TapChains:
    """The per-tap chains of one table, in one namespace (`hooks`: the table's hook chains
    and the map, as nft text)."""

    def __init__(self, namespace: str, table: str, hooks: str) -> None:
        self._namespace, self._table, self._hooks = namespace, table, hooks
        self._lock = asyncio.Lock()

    async def _nft(self, *args: str, stdin: str | None = None) -> str:
        return await run_nft(self._namespace, *args, stdin=stdin)

    async def _load(self, ruleset: str) -> None:
        async with self._lock:
            await self._nft("-f", "-", stdin=ruleset)

    async def set(self, tap: str, rules: Sequence[str]) -> None:
        """Make `rules` the chain of `tap` (none: it has no chain)."""
        await self._load(tap_ruleset(self._table, self._hooks, tap, rules))

    async def unset(self, tap: str) -> None:
        """Forget `tap` (it is gone); idempotent."""
        await self._load(remove_tap_ruleset(self._table, self._hooks, tap))

    async def replace_all(self, taps: Mapping[str, Sequence[str]]) -> None:
        """Exactly the chains of `taps`: after a daemon restart, its running servers'."""
        await self._load(full_ruleset(self._table, self._hooks, taps))

    async def remove(self) -> None:
        """Remove the table (the daemon stops with no server running); idempotent."""
        async with self._lock:
            await delete_if_present(self._nft, "table", "bridge", self._table)
