"""Who may use a console token (docs/security.md, "Web console"): a token asked for by a
dashboard session opens only with that session's cookie, so a token stolen from the page (its
address, a log, a shoulder) opens nothing in another browser; a token asked with Basic
authentication is a bearer token, but not for a browser signed in as another user; and
another site's page cannot ask for a token with the victim's session (CSRF). Every refusal is
an HTTP answer before any upgrade and leaves the token unused.

The servers run on the fake hypervisor: what is checked here ends before VNC is reached.
Nothing listens for the daemon on the fake's VNC ports (or another test's QEMU does, with
another password), so a token that passes these checks meets 409 busy, used up."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientWebSocketResponse as ClientWS
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient

from openhosting.api.handlers import console as console_handler
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.accounts.web_sessions import session_hash
from openhosting.services.platform import Platform
from openhosting.services.servers.consoles import token_hash
from openhosting.store import console_tokens as token_store
from openhosting.store.records import ConsoleTokenRecord
from openhosting.wire.text import parse_properties
from tests.api.test_console import UPGRADE, refused
from tests.conftest import basic_auth, config_in
from tests.web.session_helpers import SignedIn, sign_in

# Not the VNC password of any other test's guest: a VNC found on the fake's port refuses it.
VNC_PASSWORD = "bound1"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_in(tmp_path, hypervisor={"driver": "fake"})


async def running_server(client: TestClient, user: NewKey) -> str:
    body = f"name c\ncpu 500\nmem 64\npersistent true\nvnc:password {VNC_PASSWORD}"
    response = await client.post("/servers/create", data=body, headers=basic_auth(user))
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())["server"]


async def dashboard_token(client: TestClient, session: SignedIn, server: str) -> str:
    """What the dashboard's console button asks: a token, with the session's cookie and CSRF."""
    response = await client.post(f"/servers/{server}/console", headers=session.changes())
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    return token


def token_row(platform: Platform, token: str) -> ConsoleTokenRecord:
    with platform.engine.connect() as connection:
        row = token_store.get_token(connection, token_hash(token))
    assert row is not None
    return row


async def test_a_dashboard_token_opens_only_with_the_cookie_of_the_session_that_asked(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    server = await running_server(client, user)
    victim = await sign_in(client, user)
    token = await dashboard_token(client, victim, server)
    assert token_row(platform, token).session_hash == session_hash(victim.cookie)

    thief = await sign_in(client, other_user)
    same_user_elsewhere = await sign_in(client, user)  # the owner's key, another browser
    for holder in ({}, thief.reads(), same_user_elsewhere.reads(), {"Cookie": "x=1"}):
        status, error, body = await refused(client, f"?token={token}", holder)
        assert (status, error) == (401, "auth"), body
        assert b"another dashboard session" in body
    # The page's plain GET says why in words, without using the token up either.
    said = await client.get(f"/console/websocket?token={token}", headers=thief.reads())
    assert said.status == 401 and "another dashboard session" in await said.text()
    # The token failed, not the live cookie beside it: kept (the dashboard stays signed in).
    assert "Set-Cookie" not in said.headers
    assert token_row(platform, token).used_at is None

    # A signed-out session's cookie opens nothing any more.
    signed_out = await sign_in(client, user)
    token_of_signed_out = await dashboard_token(client, signed_out, server)
    gone = await client.post("/dashboard/session/end", headers=signed_out.changes())
    assert gone.status == 204, await gone.text()
    status, _, _ = await refused(client, f"?token={token_of_signed_out}", signed_out.reads())
    assert status == 401

    # Its own session passes, and uses the token up (VNC is not reached here: 409).
    status, error, body = await refused(client, f"?token={token}", victim.reads())
    assert (status, error) == (409, "busy"), body
    assert token_row(platform, token).used_at is not None


async def test_a_basic_auth_token_is_a_bearer_token_but_not_for_another_users_browser(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    server = await running_server(client, user)
    response = await client.post(f"/servers/{server}/console", headers=basic_auth(user))
    assert response.status == 200, await response.text()
    token = parse_properties(await response.text())["token"]
    assert token_row(platform, token).session_hash is None

    thief = await sign_in(client, other_user)
    status, error, body = await refused(client, f"?token={token}", thief.reads())
    assert (status, error) == (401, "auth") and b"another user" in body, body
    assert token_row(platform, token).used_at is None
    # The owner's own browser, signed in or not, may use it (an API client hands it over).
    owner = await sign_in(client, user)
    assert (await refused(client, f"?token={token}", owner.reads()))[0] == 409
    assert token_row(platform, token).used_at is not None


async def test_another_sites_page_cannot_ask_for_a_token_with_the_victims_session(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    server = await running_server(client, user)
    victim = await sign_in(client, user)
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    forged = (
        {**victim.reads(), "Content-Type": "application/x-www-form-urlencoded"},  # a form
        {**victim.changes(), **evil},  # even with the CSRF token, were it ever stolen
        {**victim.changes(), "Sec-Fetch-Site": "cross-site"},
        {**victim.changes(), "Origin": "null"},
    )
    for headers in forged:
        response = await client.post(f"/servers/{server}/console", headers=headers)
        assert response.status == 403, await response.text()
        assert response.headers["X-Elastic-Error"] == "auth"
    with platform.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM console_tokens").scalar() == 0
    # And the WebSocket of another site's page is refused before the token is looked at.
    token = await dashboard_token(client, victim, server)
    headers = {**victim.reads(), **UPGRADE, "Origin": "https://evil.example"}
    status, _, _ = await refused(client, f"?token={token}", headers)
    assert status == 403 and token_row(platform, token).used_at is None
    assert time.time() < token_row(platform, token).expires


@pytest.fixture
def vnc_stand_in(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's VNC, as the bridge sees it once logged in: a loopback peer that sends
    nothing of its own (the fake hypervisor has no VNC)."""
    peers: list[asyncio.StreamWriter] = []

    async def logged_in(
        server: str, target: object
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer)

        listener = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        opened = await asyncio.open_connection("127.0.0.1", port)
        listener.close()
        return opened

    monkeypatch.setattr(platform.consoles, "_log_in", logged_in)
    monkeypatch.setattr(console_handler, "ACCESS_CHECK_SECONDS", 0.1, raising=False)
    yield
    for peer in peers:
        peer.close()


async def open_console(client: TestClient, token: str, headers: dict[str, str]) -> ClientWS:
    """The page's WebSocket, through the RFB greeting (no authentication, as noVNC)."""
    ws = await client.ws_connect(
        f"/console/websocket?token={token}", protocols=("binary",), headers=headers
    )
    assert (await ws.receive_bytes(timeout=5)).startswith(b"RFB 003.008")
    await ws.send_bytes(b"RFB 003.008\n")
    assert await ws.receive_bytes(timeout=5) == b"\x01\x01"  # one type: none
    await ws.send_bytes(b"\x01")
    assert await ws.receive_bytes(timeout=5) == b"\x00\x00\x00\x00"  # passed
    await ws.send_bytes(b"\x01")  # ClientInit
    return ws


async def test_a_console_ends_when_its_session_does_or_the_key_is_rotated(
    client: TestClient, platform: Platform, user: NewKey, vnc_stand_in: None
) -> None:
    """A console outlived what opened it: signed out, or the key rotated because it (or the
    session) was stolen, the open console still typed into the server; and a token asked
    with the old key still opened one after the rotation."""
    server = await running_server(client, user)
    signed_out, rotated = await sign_in(client, user), await sign_in(client, user)
    consoles = []
    for session in (signed_out, rotated):
        token = await dashboard_token(client, session, server)
        consoles.append(await open_console(client, token, session.reads()))

    async def bearer_token() -> str:
        response = await client.post(f"/servers/{server}/console", headers=basic_auth(user))
        assert response.status == 200, await response.text()
        return parse_properties(await response.text())["token"]

    bearer = await open_console(client, await bearer_token(), {})
    unused = await bearer_token()
    try:
        assert (await client.post("/dashboard/session/end", headers=signed_out.changes())).ok
        closed = await consoles[0].receive(timeout=5)
        assert closed.type is WSMsgType.CLOSE, closed
        assert closed.data == WSCloseCode.POLICY_VIOLATION
        assert closed.extra.startswith("Signed out")
        assert not consoles[1].closed and not bearer.closed

        platform.accounts.rotate_key(user.uuid)
        for ws in (consoles[1], bearer):
            closed = await ws.receive(timeout=5)
            assert (closed.type, closed.data) == (WSMsgType.CLOSE, WSCloseCode.POLICY_VIOLATION)
        status, error, _ = await refused(client, f"?token={unused}")
        assert (status, error) == (401, "auth")
    finally:
        for ws in (*consoles, bearer):
            await ws.close()
