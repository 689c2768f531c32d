"""The web console's refusals, without QEMU (docs/api.md §8, `POST /servers/S/console`,
`GET /console/websocket`): each is an HTTP answer before any upgrade, so no RFB byte flows.
The running case, a real VNC through the bridge, is tests/integration/test_console.py."""

import time

import pytest
from aiohttp.test_utils import TestClient

from openhosting.api.access_log import loggable_path
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.services.servers.consoles import token_hash
from openhosting.store import console_tokens as token_store
from openhosting.store.records import ConsoleTokenRecord
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth, config_in

# What a browser sends to open a WebSocket (the key is RFC 6455's example).
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Protocol": "binary",
}


async def refused(
    client: TestClient, query: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """Try to open the console WebSocket: the answer's status, error type and body, checked
    to be a plain answer (no upgrade, no RFB)."""
    response = await client.get(
        f"/console/websocket{query}", headers={**UPGRADE, **(headers or {})}
    )
    body = await response.read()
    assert response.status != 101 and b"RFB" not in body
    return response.status, response.headers.get("X-Elastic-Error", ""), body


async def stopped_server(client: TestClient, auth: dict[str, str]) -> str:
    body = "name c\ncpu 500\nmem 64\npersistent true\nvnc:password secret1"
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())["server"]


def add_token(platform: Platform, server: str, user: str, expires: float, used: bool) -> str:
    """A token of the user's for `server`, stored as the service stores one."""
    token = f"test-token-{expires}-{used}"
    with platform.engine.begin() as connection:
        token_store.insert_token(
            connection, ConsoleTokenRecord(token_hash(token), server, user, expires)
        )
        if used:
            assert token_store.use_token(connection, token_hash(token), time.time())
    return token


def token_row(platform: Platform, token: str) -> ConsoleTokenRecord | None:
    with platform.engine.connect() as connection:
        return token_store.get_token(connection, token_hash(token))


async def test_no_token_or_an_unknown_one_is_refused_401_without_basic_auth_asked(
    client: TestClient,
) -> None:
    status, error, body = await refused(client, "")
    assert (status, error) == (401, "auth") and b"Console token required" in body
    status, error, body = await refused(client, "?token=nosuchtoken")
    assert (status, error) == (401, "auth") and b"Unknown console token" in body
    status, error, body = await refused(client, "?token=nosuchtoken&token=another")
    assert (status, error) == (400, "usage") and b"token" in body


async def test_a_used_or_expired_token_is_refused_and_a_stopped_servers_too(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    server = await stopped_server(client, auth)
    used = add_token(platform, server, user.uuid, time.time() + 60, used=True)
    expired = add_token(platform, server, user.uuid, time.time() - 1, used=False)
    status, error, body = await refused(client, f"?token={used}")
    assert (status, error) == (401, "auth") and b"used" in body
    status, error, body = await refused(client, f"?token={expired}")
    assert (status, error) == (401, "auth") and b"expired" in body

    # A good token of a server that no longer runs: used up, and refused.
    valid = add_token(platform, server, user.uuid, time.time() + 60, used=False)
    status, error, body = await refused(client, f"?token={valid}")
    assert (status, error) == (409, "busy") and b"not active" in body
    assert (row := token_row(platform, valid)) is not None and row.used_at is not None


async def test_another_sites_origin_is_refused_403_and_does_not_use_the_token_up(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    server = await stopped_server(client, auth)
    token = add_token(platform, server, user.uuid, time.time() + 60, used=False)
    for origin in ("https://evil.example", "null", f"http://{client.host}:1"):
        status, error, _ = await refused(client, f"?token={token}", {"Origin": origin})
        assert (status, error) == (403, "auth"), origin
    assert (row := token_row(platform, token)) is not None and row.used_at is None
    # The daemon's own origin passes the check (and meets the stopped server).
    own = f"http://{client.host}:{client.port}"
    assert (await refused(client, f"?token={token}", {"Origin": own}))[0] == 409


async def test_a_plain_get_without_upgrade_does_not_use_the_token_up(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    server = await stopped_server(client, auth)
    token = add_token(platform, server, user.uuid, time.time() + 60, used=False)
    response = await client.get(f"/console/websocket?token={token}")
    assert response.status == 400 and response.headers["X-Elastic-Error"] == "usage"
    assert (row := token_row(platform, token)) is not None and row.used_at is None


async def test_a_token_is_asked_with_basic_auth_only_for_the_owners_running_server(
    client: TestClient,
    auth: dict[str, str],
    other_user: NewKey,
    platform: Platform,
) -> None:
    server = await stopped_server(client, auth)
    response = await client.post(f"/servers/{server}/console")
    assert response.status == 401
    response = await client.post(f"/servers/{server}/console", headers=basic_auth(other_user))
    assert response.status == 404 and response.headers["X-Elastic-Error"] == "missing"
    response = await client.post(f"/servers/{server}/console", headers=auth)
    assert response.status == 409 and "not active" in await response.text()
    assert (await client.get(f"/servers/{server}/console", headers=auth)).status == 405
    with platform.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM console_tokens").scalar() == 0


@pytest.fixture
def config(tmp_path) -> Config:  # type: ignore[no-untyped-def]
    """This module's platform: a throttle that locks an address out after four failed logins
    (its maximum of 1 times the share of an address), so the throttle test is quick."""
    return config_in(tmp_path, api={"auth_failures_free": 1, "auth_failures_max": 1})


async def test_bad_tokens_count_as_failed_logins_of_their_address(client: TestClient) -> None:
    for _ in range(4):
        response = await client.get("/console/websocket?token=guess", headers=UPGRADE)
        assert response.status == 401 and "Retry-After" not in response.headers
    response = await client.get("/console/websocket?token=guess", headers=UPGRADE)
    assert response.status == 401 and "Retry-After" in response.headers


def test_the_access_log_hides_console_tokens() -> None:
    assert loggable_path("/console/websocket?token=abc") == "/console/websocket?token=-"
    assert loggable_path("/console/?x=1&token=abc&y=2") == "/console/?x=1&token=-&y=2"
    assert loggable_path("/drives/list") == "/drives/list"
