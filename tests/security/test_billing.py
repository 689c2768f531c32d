"""Billing: limits refuse with 402 naming what is short, balances gate spending, metering
charges what was held at the configured prices (on a simulated clock)."""

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from openhosting.config import Config
from openhosting.errors import UsageError
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.accounts.billing import MICROS, to_micros
from openhosting.services.platform import Platform, open_platform
from openhosting.store import servers as server_store
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth, serve_api
from tests.test_daemon import ADMIN

GIB = 1 << 30


@pytest.fixture
def billed(config: Config) -> Iterator[Platform]:
    billing = dataclasses.replace(config.billing, enabled=True)
    platform = open_platform(dataclasses.replace(config, billing=billing))
    yield platform
    platform.close()


@pytest.fixture
async def billed_client(aiohttp_client: AiohttpClient, billed: Platform) -> TestClient:
    return await serve_api(aiohttp_client, billed)


async def expect_402(response, word: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status == 402, await response.text()
    assert response.headers["X-Elastic-Error"] == "billing"
    assert word in await response.text()


async def test_an_exhausted_balance_refuses_new_spending_until_credited(
    billed_client: TestClient, billed: Platform
) -> None:
    key = billed.accounts.create_user("payg")
    auth = basic_auth(key)
    await expect_402(
        await billed_client.post("/drives/create", data="size 1G", headers=auth), "Balance"
    )
    await expect_402(
        await billed_client.post("/servers/create/stopped", data="name s\ncpu 500\nmem 64",
                                 headers=auth),
        "Balance",
    )  # fmt: skip
    billed.billing.credit(key.uuid, to_micros("5"))
    made = await billed_client.post("/drives/create", data="size 1G", headers=auth)
    assert made.status == 200
    info = parse_properties(await (await billed_client.get("/account/info", headers=auth)).text())
    assert (info["balance"], info["usage:drive:bytes"]) == ("5.000000", str(GIB))


async def test_every_subscription_limit_is_402_naming_it(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    platform.accounts.set_limits(
        user.uuid, max_servers=1, max_cpu_mhz=1500, max_mem_mb=512, max_drive_bytes=1000
    )
    await expect_402(await client.post("/drives/create", data="size 1001", headers=auth), "Drive")
    body = "name s\ncpu 1000\nmem 256"
    first = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert first.status == 200
    server = parse_properties(await first.text())["server"]
    await expect_402(
        await client.post("/servers/create/stopped", data=body, headers=auth), "Servers"
    )
    # cpu and mem are limits of *active* servers: checked when one would start.
    await client.post(f"/servers/{server}/set", data="cpu 2000", headers=auth)
    await expect_402(await client.post(f"/servers/{server}/start", headers=auth), "cpu")
    await client.post(f"/servers/{server}/set", data="cpu 1000\nmem 1024", headers=auth)
    await expect_402(await client.post(f"/servers/{server}/start", headers=auth), "mem")
    info = parse_properties(
        await (await client.get(f"/servers/{server}/info", headers=auth)).text()
    )
    assert info["status"] == "stopped"  # refused before anything started
    account = parse_properties(await (await client.get("/account/info", headers=auth)).text())
    assert (account["limit:servers"], account["limit:cpu"], account["usage:servers"]) == (
        "1", "1500", "1",
    )  # fmt: skip


def test_metering_charges_what_was_held_at_the_configured_prices(billed: Platform) -> None:
    key = billed.accounts.create_user("metered")
    billed.billing.credit(key.uuid, 10 * MICROS)
    start = 1_000_000.0
    billed.billing.meter(now=start)  # the first look only starts the clock
    asyncio_run_create(billed, key.uuid)
    with billed.engine.begin() as connection:
        server_store.insert_server(
            connection, uuid="00000000-0000-4000-8000-00000000000a", user=key.uuid,
            config=json.dumps({"name": "s", "cpu": "3000", "mem": "2048"}), status="active",
            created_at=time.time(),
        )  # fmt: skip
    billed.billing.meter(now=start + 1800)  # half an hour
    prices = billed.config.billing
    expected = (
        Decimal(2) * Decimal(prices.drive_gb_hour)
        + Decimal(3) * Decimal(prices.cpu_ghz_hour)
        + Decimal(2) * Decimal(prices.mem_gb_hour)
    ) / 2
    [record] = billed.billing.usage_history(key.uuid)
    assert record.charge == int(expected * MICROS)
    assert (record.drive_bytes, record.cpu_mhz, record.mem_mb) == (2 * GIB, 3000, 2048)
    info = billed.billing.account_info(key.uuid)
    assert Decimal(info["balance"]) == Decimal(10) - Decimal(record.charge) / MICROS
    # Running out of balance never stops what runs: the server is still active.
    billed.billing.credit(key.uuid, -20 * MICROS)
    billed.billing.meter(now=start + 3600)
    with billed.engine.connect() as connection:
        row = server_store.get_server(connection, "00000000-0000-4000-8000-00000000000a")
    assert row is not None and row.status == "active"
    assert Decimal(billed.billing.account_info(key.uuid)["balance"]) < 0


def asyncio_run_create(platform: Platform, user: str) -> None:
    import asyncio

    asyncio.run(platform.drives.create(user, {"size": "2G", "encryption:cipher": "none"}))


@pytest.mark.parametrize("amount", ["nan", "inf", "1e30", "0.0000001"])
def test_admin_tool_refuses_an_amount_no_balance_holds_in_one_line(
    billed: Platform, amount: str
) -> None:
    key = billed.accounts.create_user("cli")
    billed.billing.credit(key.uuid, to_micros("7"))
    refused = subprocess.run(
        [ADMIN, "--state-dir", billed.config.state_dir, "account", "credit", key.uuid, amount],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"openhosting-admin: Invalid amount {amount!r}: ")
    assert refused.stderr.count("\n") == 1  # one line, no traceback
    assert billed.billing.account_info(key.uuid)["balance"] == "7.000000"


def test_a_credit_taking_the_balance_past_its_largest_is_refused_and_changes_nothing(
    billed: Platform,
) -> None:
    key = billed.accounts.create_user("rich")
    billed.billing.credit(key.uuid, to_micros("600000000000"))
    with pytest.raises(UsageError, match=r"at most 1000000000000\.000000 either way"):
        billed.billing.credit(key.uuid, to_micros("600000000000"))
    assert billed.billing.account_info(key.uuid)["balance"] == "600000000000.000000"
    billed.billing.credit(key.uuid, to_micros("-1000000000000"))  # taking: the same bound
    with pytest.raises(UsageError, match=r"to -1400000000000\.000000"):
        billed.billing.credit(key.uuid, to_micros("-1000000000000"))
    assert billed.billing.account_info(key.uuid)["balance"] == "-400000000000.000000"


def test_admin_tool_credits_and_shows_usage(billed: Platform) -> None:
    key = billed.accounts.create_user("cli")
    state = billed.config.state_dir
    shown = subprocess.run(
        [ADMIN, "--state-dir", state, "account", "credit", key.uuid, "12.5"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert parse_properties(shown)["balance"] == "12.500000"
    refused = subprocess.run(
        [ADMIN, "--state-dir", state, "account", "credit", key.uuid, "lots"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "amount" in refused.stderr
    billed.billing.meter(now=1.0)
    billed.billing.meter(now=3601.0)
    usage = subprocess.run(
        [ADMIN, "--state-dir", state, "account", "usage", key.uuid],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "charge 0.000000" in usage
