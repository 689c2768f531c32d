"""The web console on real QEMU: a token from `POST /servers/S/console` opens a WebSocket that
carries the server's RFB stream, once; the session ends when the server stops. The daemon
logs in to QEMU's VNC itself (VNC authentication, or VeNCrypt X509 for `vnc:tls on`) and
offers the browser RFB without authentication, so the password never reaches it. The servers
have no drive: QEMU's VNC server runs without a guest, so nothing boots."""

import asyncio
import struct
import time

import aiohttp
from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.services.servers.consoles import token_hash
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth
from tests.integration.server_helpers import create_server

NONE = 1

TIMEOUT = 10
PASSWORD = "secret1"


class WsReader:
    """Exact byte counts from a WebSocket whose messages may split RFB anywhere."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.buffer = ws, b""

    async def read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            message = await self.ws.receive(timeout=TIMEOUT)
            assert message.type == aiohttp.WSMsgType.BINARY, message
            self.buffer += message.data
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data


async def console_token(client: TestClient, auth: dict[str, str], server: str) -> dict[str, str]:
    response = await client.post(f"/servers/{server}/console", headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


async def open_console(client: TestClient, token: str) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect(f"/console/websocket?token={token}", protocols=("binary",))


async def rfb_without_password(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, int]:
    """Speak RFB 3.8 as noVNC does through the console, which must offer security type None
    alone (the daemon has logged in with the password), up to QEMU's ServerInit: the size of
    the server's screen."""
    rfb = WsReader(ws)
    assert await rfb.read(12) == b"RFB 003.008\n"
    await ws.send_bytes(b"RFB 003.008\n")
    count = (await rfb.read(1))[0]
    assert list(await rfb.read(count)) == [NONE]
    await ws.send_bytes(bytes([NONE]))
    assert await rfb.read(4) == b"\0\0\0\0"  # SecurityResult: OK, no password asked
    await ws.send_bytes(b"\1")  # ClientInit (shared): QEMU answers it, so the login held
    width, height = struct.unpack(">HH", await rfb.read(4))
    await rfb.read(16)  # the pixel format
    (name_length,) = struct.unpack(">I", await rfb.read(4))
    await rfb.read(name_length)
    return width, height


async def handshake_status(client: TestClient, token: str) -> int:
    """The HTTP status that refused the WebSocket of `token` (101 if it opened)."""
    try:
        ws = await open_console(client, token)
    except aiohttp.WSServerHandshakeError as error:
        return error.status
    await ws.close()
    return 101


async def test_a_console_token_opens_the_servers_vnc_once_and_its_stop_ends_the_session(
    client: TestClient,
    auth: dict[str, str],
    other_user: NewKey,
    platform: Platform,
    servers_cleanup: None,
) -> None:
    body = f"name c\ncpu 500\nmem 64\npersistent true\nvnc:password {PASSWORD}"
    server = (await create_server(client, auth, body))["server"]
    ticket = await console_token(client, auth, server)
    token = ticket["token"]
    assert len(token) >= 43  # 32 random bytes, base64url
    assert abs(int(ticket["expires"]) - (time.time() + 60)) < 5
    assert ticket["url"] == f"http://{client.host}:{client.port}/console/?token={token}"
    with platform.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM console_tokens").all()
    assert [row.token_hash for row in rows] == [token_hash(token)]
    assert token not in repr(rows)  # only its hash is stored
    other = await client.post(f"/servers/{server}/console", headers=basic_auth(other_user))
    assert other.status == 404

    ws = await open_console(client, token)
    try:
        assert ws.protocol == "binary"
        width, height = await rfb_without_password(ws)
        assert width > 0 and height > 0
        assert platform.consoles.sessions_of(server) == 1

        # Used: refused, while the first session runs on.
        assert await handshake_status(client, token) == 401
        # Two uses of one token at once: one wins.
        fresh = (await console_token(client, auth, server))["token"]
        results = await asyncio.gather(*(handshake_status(client, fresh) for _ in range(2)))
        assert sorted(results) == [101, 401]

        later = (await console_token(client, auth, server))["token"]
        stop = await client.post(f"/servers/{server}/stop", headers=auth)
        assert stop.status == 204, await stop.text()
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    finally:
        await ws.close()
    deadline = time.monotonic() + TIMEOUT  # the daemon's side winds down after the close
    while platform.consoles.sessions_of(server) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert platform.consoles.sessions_of(server) == 0
    # A token of a server that has stopped opens nothing.
    assert await handshake_status(client, later) == 409


async def test_a_vnc_tls_servers_console_is_opened_by_the_daemon_through_vencrypt(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    """QEMU speaks only VeNCrypt X509 then (which noVNC in a browser cannot): the daemon
    speaks it, trusting the platform's VNC CA, and the browser gets plain RFB."""
    body = f"name t\ncpu 500\nmem 64\npersistent true\nvnc:password {PASSWORD}\nvnc:tls on"
    server = (await create_server(client, auth, body))["server"]
    ticket = await console_token(client, auth, server)
    ws = await open_console(client, ticket["token"])
    try:
        width, height = await rfb_without_password(ws)
        assert width > 0 and height > 0
    finally:
        await ws.close()
