"""Metered usage per day (UTC): what `GET /account/usage` shows and the dashboard charts.

The billing meter records what an account held over each interval (services/accounts/billing.py).
Per day, each quantity is its time-weighted average over the seconds metered that day, and
the charge is the sum of the charges, an interval across midnight split in proportion.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openhosting.store.records import UsageRecord

DAY_SECONDS = 86400
QUANTITIES = {
    "drive:bytes": "drive_bytes",
    "cpu": "cpu_mhz",
    "mem": "mem_mb",
    "ips": "ips",
    "vlans": "vlans",
}


@dataclass
class _Day:
    seconds: float = 0.0
    charge: float = 0.0  # millionths
    integrals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUANTITIES, 0.0))


def _pieces(start: float, end: float) -> Iterable[tuple[int, float]]:
    """(day number since the epoch, seconds) of the interval [start, end) on each day."""
    while start < end:
        day = int(start // DAY_SECONDS)
        until = min(end, (day + 1) * DAY_SECONDS)
        yield day, until - start
        start = until


def usage_per_day(records: Iterable[UsageRecord], since: float) -> list[dict[str, Any]]:
    """One entry per day with metered usage from `since` on, oldest first: `day`
    (YYYY-MM-DD), `seconds` metered, the averages of `drive:bytes`, `cpu`, `mem`, `ips`,
    `vlans`, and `charge` (millionths)."""
    days: dict[int, _Day] = {}
    for record in records:
        start, end = max(record.start, since), record.end
        length = record.end - record.start
        if end <= start or length <= 0:
            continue
        for day, seconds in _pieces(start, end):
            entry = days.setdefault(day, _Day())
            entry.seconds += seconds
            entry.charge += record.charge * seconds / length
            for key, column in QUANTITIES.items():
                entry.integrals[key] += getattr(record, column) * seconds
    return [
        {
            "day": dt.datetime.fromtimestamp(day * DAY_SECONDS, dt.UTC).date().isoformat(),
            "seconds": round(entry.seconds),
            **{key: round(total / entry.seconds) for key, total in entry.integrals.items()},
            "charge": round(entry.charge),
        }
        for day, entry in sorted(days.items())
    ]
