"""The value of `nic:N:block`: the inbound ports blocked on a NIC (the original service's
firewall), e.g. `tcp/22 udp/53 25 8000-8100`.

Pure: a space-separated list in, a tuple of `BlockedPorts` out, or a `UsageError` naming the
key and the entry that is wrong. An entry is `tcp/PORT`, `udp/PORT`, or a bare `PORT` (both
protocols); a port may be a range `FIRST-LAST`. Entries keep their order, repeats dropped, so
the real service's bodies read back as they were sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from openhosting.errors import UsageError

PROTOCOLS = ("tcp", "udp")
PORT_RANGE = (1, 65535)
MAX_ENTRIES = 256  # each entry is a rule element: keep a guest's ruleset small
_ENTRY = re.compile(r"(?:(?P<protocol>[a-z]+)/)?(?P<first>[0-9]{1,5})(?:-(?P<last>[0-9]{1,5}))?")


@dataclass(frozen=True)
class BlockedPorts:
    """Ports `first`..`last` blocked for `protocol` (None: both TCP and UDP)."""

    protocol: str | None
    first: int
    last: int

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return ports if self.protocol is None else f"{self.protocol}/{ports}"

    def covers(self, protocol: str) -> bool:
        return self.protocol is None or self.protocol == protocol


def _parse_entry(entry: str, key: str) -> BlockedPorts:
    match = _ENTRY.fullmatch(entry.lower())
    usage = (
        f"{key}: {entry!r} is not a port to block; use tcp/PORT, udp/PORT or PORT (both),"
        f" where PORT is {PORT_RANGE[0]}-{PORT_RANGE[1]} or a range FIRST-LAST"
    )
    if match is None:
        raise UsageError(usage)
    protocol = match["protocol"]
    first = int(match["first"])
    last = int(match["last"]) if match["last"] is not None else first
    low, high = PORT_RANGE
    if protocol is not None and protocol not in PROTOCOLS:
        raise UsageError(usage)
    if not (low <= first <= high and low <= last <= high) or last < first:
        raise UsageError(usage)
    return BlockedPorts(protocol, first, last)


def parse_block_list(text: str, key: str) -> tuple[BlockedPorts, ...]:
    """The entries of a `nic:N:block` value, in order, without repeats."""
    entries = tuple(dict.fromkeys(_parse_entry(entry, key) for entry in text.split()))
    if len(entries) > MAX_ENTRIES:
        raise UsageError(f"{key}: at most {MAX_ENTRIES} entries, not {len(entries)}")
    return entries


def format_block_list(entries: tuple[BlockedPorts, ...]) -> str:
    """The canonical text of a `nic:N:block` value (`parse_block_list` reads it back)."""
    return " ".join(str(entry) for entry in entries)


def port_intervals(entries: tuple[BlockedPorts, ...], protocol: str) -> list[tuple[int, int]]:
    """The ports blocked for `protocol` as sorted, disjoint, non-adjacent intervals (an nft
    interval set refuses overlapping elements)."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted((e.first, e.last) for e in entries if e.covers(protocol)):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged
