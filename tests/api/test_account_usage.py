"""`GET /account/usage`: the caller's metered usage per day (UTC), for the dashboard's chart."""

import time

from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.accounts.usage_days import DAY_SECONDS
from openhosting.services.platform import Platform
from openhosting.store import billing as billing_store
from tests.conftest import basic_auth


def metered(platform: Platform, user: str, start: float, end: float, cpu: int, charge: int) -> None:
    with platform.engine.begin() as connection:
        billing_store.record_usage(
            connection, user=user, start=start, end=end, drive_bytes=1 << 30, cpu_mhz=cpu,
            mem_mb=256, ips=0, vlans=0, charge=charge,
        )  # fmt: skip


async def test_usage_per_day_of_the_caller_only(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    today = time.time() // DAY_SECONDS * DAY_SECONDS
    metered(platform, user.uuid, today - DAY_SECONDS, today - DAY_SECONDS + 3600, 1000, 500_000)
    metered(platform, user.uuid, today, today + 60, 2000, 1_000)
    metered(platform, user.uuid, today - 40 * DAY_SECONDS, today - 39 * DAY_SECONDS, 1, 1)
    metered(platform, other_user.uuid, today, today + 60, 64000, 9_000_000)
    response = await client.get(
        "/account/usage", headers={**basic_auth(user), "Accept": "application/json"}
    )
    assert response.status == 200
    days = await response.json()
    assert [(day["cpu"], day["seconds"], day["charge"]) for day in days] == [
        (1000, 3600, "0.500000"),
        (2000, 60, "0.001000"),
    ]
    assert days[0]["drive:bytes"] == 1 << 30 and days[0]["mem"] == 256
    one_day = await client.get("/account/usage?days=1", headers=basic_auth(user))
    assert (await one_day.text()).count("day ") == 1


async def test_a_bad_number_of_days_is_400_usage(client: TestClient, user: NewKey) -> None:
    for days in ("0", "367", "x", "-1", ""):
        response = await client.get(f"/account/usage?days={days}", headers=basic_auth(user))
        assert response.status == 400, days
        assert response.headers["X-Elastic-Error"] == "usage"


async def test_days_given_twice_is_400_usage_naming_it(client: TestClient, user: NewKey) -> None:
    """`?days=1&days=2` took one of the two silently (200); which one was meant is unknown."""
    for query in ("days=1&days=2", "days=7&days=7", "days=1&x=1&days=1"):
        response = await client.get(f"/account/usage?{query}", headers=basic_auth(user))
        assert response.status == 400, query
        assert response.headers["X-Elastic-Error"] == "usage"
        assert "days" in await response.text()
    once = await client.get("/account/usage?days=1&other=1&other=2", headers=basic_auth(user))
    assert once.status == 200  # a parameter the command does not read is not looked at
