"""Metered usage per day: time-weighted averages and charges, split at midnight (UTC)."""

from openhosting.services.accounts.usage_days import DAY_SECONDS, usage_per_day
from openhosting.store.records import UsageRecord

MIDNIGHT = 20_000 * DAY_SECONDS  # 2024-10-04 00:00 UTC


def record(start: float, end: float, cpu: int, charge: int, mem_mb: int = 0) -> UsageRecord:
    return UsageRecord(
        id=1, user="u", start=start, end=end, drive_bytes=0, cpu_mhz=cpu, mem_mb=mem_mb,
        ips=0, vlans=0, charge=charge,
    )  # fmt: skip


def test_an_interval_across_midnight_is_split_in_proportion() -> None:
    days = usage_per_day([record(MIDNIGHT - 3600, MIDNIGHT + 3 * 3600, 1000, 400)], 0)
    assert [day["day"] for day in days] == ["2024-10-03", "2024-10-04"]
    assert [day["seconds"] for day in days] == [3600, 3 * 3600]
    assert [day["charge"] for day in days] == [100, 300]
    assert [day["cpu"] for day in days] == [1000, 1000]


def test_quantities_are_averaged_over_the_seconds_metered() -> None:
    records = [
        record(MIDNIGHT, MIDNIGHT + 3600, 2000, 10, mem_mb=512),
        record(MIDNIGHT + 3600, MIDNIGHT + 4 * 3600, 0, 0, mem_mb=0),
    ]
    (day,) = usage_per_day(records, 0)
    assert (day["cpu"], day["mem"], day["seconds"], day["charge"]) == (500, 128, 4 * 3600, 10)


def test_what_came_before_since_is_left_out() -> None:
    days = usage_per_day([record(MIDNIGHT - 3600, MIDNIGHT + 3600, 1000, 200)], MIDNIGHT)
    assert [(day["day"], day["seconds"], day["charge"]) for day in days] == [
        ("2024-10-04", 3600, 100)
    ]
