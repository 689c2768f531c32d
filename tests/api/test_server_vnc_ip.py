"""`vnc:ip` on create and set: `auto` or one of the user's own IP resources, nothing else
(400 `usage`): not an address outside the platform, not another user's."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth, config_with_pool

BASE = "name s\ncpu 1000\nmem 256\nvnc:password secret\n"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_with_pool(tmp_path)


async def own_ip(client: TestClient, auth: dict[str, str]) -> str:
    response = await client.post("/resources/ip/create", data="name vnc", headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())["resource"]


async def create_stopped(client: TestClient, auth: dict[str, str], extra: str) -> tuple[int, str]:
    response = await client.post("/servers/create/stopped", data=BASE + extra, headers=auth)
    return response.status, response.headers.get("X-Elastic-Error", "")


async def test_an_address_outside_the_platform_is_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert await create_stopped(client, auth, "vnc:ip 192.0.2.77") == (400, "usage")
    assert await create_stopped(client, auth, "vnc 203.0.113.5") == (400, "usage")


async def test_another_users_address_is_refused(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    theirs = await own_ip(client, basic_auth(other_user))
    assert await create_stopped(client, auth, f"vnc:ip {theirs}") == (400, "usage")


async def test_auto_and_the_users_own_address_are_accepted(
    client: TestClient, auth: dict[str, str]
) -> None:
    mine = await own_ip(client, auth)
    assert (await create_stopped(client, auth, "vnc:ip auto"))[0] == 200
    assert (await create_stopped(client, auth, f"vnc:ip {mine}"))[0] == 200


async def test_set_refuses_an_address_that_is_not_the_users(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    created = await client.post("/servers/create/stopped", data=BASE, headers=auth)
    server = parse_properties(await created.text())["server"]
    theirs = await own_ip(client, basic_auth(other_user))
    for value in ("192.0.2.77", theirs):
        response = await client.post(f"/servers/{server}/set", data=f"vnc:ip {value}", headers=auth)
        assert response.status == 400
        assert response.headers["X-Elastic-Error"] == "usage"
        assert "vnc:ip" in await response.text()
    mine = await own_ip(client, auth)
    response = await client.post(f"/servers/{server}/set", data=f"vnc:ip {mine}", headers=auth)
    assert response.status == 200
    assert parse_properties(await response.text())["vnc:ip"] == mine
