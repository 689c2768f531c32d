"""The web console's HTTP side: `POST /servers/S/console` hands out a token, and
`GET /console/websocket?token=T` carries the server's RFB stream over a WebSocket (subprotocol
`binary`, as noVNC speaks). Tokens, sessions and their ends are services/servers/consoles.py's.

The WebSocket is authenticated by its token (a browser cannot send Basic credentials on
one), and by the dashboard session cookie it carries when the token was asked for by a
dashboard session (services/servers/consoles.py says which tokens are bound to what); a token that
does not work counts as a failed login of its address. Every refusal
is an HTTP answer before any upgrade, so no RFB byte flows to a refused client. The daemon
has logged in to the server's VNC before the upgrade; the browser is greeted with RFB
without authentication (vnc/rfb.py), then the two streams are joined. A console lasts no
longer than what let it open (api/lasting_access.py): its user's key (rotated: it ends), and
the dashboard session its token was bound to (signed out or expired: it ends).
"""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from openhosting.api.abuse import AuthLockedOutError
from openhosting.api.answer_headers import prepare
from openhosting.api.auth import AUTH_THROTTLE_KEY
from openhosting.api.context import platform_of, session_of, user_of
from openhosting.api.lasting_access import Access, access_now, still_holds
from openhosting.api.origins import foreign_origin
from openhosting.api.query import query_parameter
from openhosting.api.sessions import SESSION_COOKIE
from openhosting.errors import AuthError, MethodError, UsageError
from openhosting.services.accounts.web_sessions import SessionError, WebSession
from openhosting.services.servers.consoles import ConsoleSession, ConsoleTokenError
from openhosting.vnc import rfb
from openhosting.wire.payload import Properties

log = logging.getLogger("openhosting.consoles")

SUBPROTOCOL = "binary"
# A browser that vanished without closing is noticed within this (WebSocket ping/pong).
HEARTBEAT_SECONDS = 30.0
# What the browser may take for its side of the RFB greeting (noVNC answers at once).
GREETING_SECONDS = 15.0
# A console ends within this once its user's key is rotated or its dashboard session has
# ended: how often they are looked up again (one or two indexed reads).
ACCESS_CHECK_SECONDS = 5.0


class OriginError(AuthError):
    """A browser page of another site tried to open a console: 403."""

    status = 403


def _server(request: web.Request) -> str:
    return request.match_info["server"].lower()


def _base_url(request: web.Request) -> str:
    """The daemon's public URL (ending in `/`), or the one this request came in on."""
    configured = platform_of(request).config.api.public_url
    if configured:
        return configured if configured.endswith("/") else configured + "/"
    return f"{request.scheme}://{request.host}/"


async def issue(request: web.Request) -> Properties:
    consoles = platform_of(request).consoles
    ticket = consoles.issue(user_of(request), _server(request), session_of(request))
    url = URL(_base_url(request) + "console/").with_query(token=ticket.token)
    return Properties(
        {
            "server": _server(request),
            "url": str(url),
            "token": ticket.token,
            "expires": ticket.expires,
        }
    )


def check_origin(request: web.Request) -> None:
    """A browser names the page that opens a WebSocket in `Origin`: it must be the daemon's
    own (its public URL, or the host this request was sent to), or any page on the web could
    open a console with a token it got hold of. No `Origin`: not a browser, allowed."""
    if (origin := foreign_origin(request)) is not None:
        raise OriginError(f"Origin {origin[:100]!r} may not open a console here")


def _browser_session(request: web.Request) -> WebSession | None:
    """The live dashboard session whose cookie the WebSocket request carries, if any (a
    cookie that opens nothing is no session: a token bound to one is then refused)."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not cookie:
        return None
    try:
        return platform_of(request).web_sessions.check(cookie)
    except SessionError:
        return None


async def _token_failed(request: web.Request, error: ConsoleTokenError) -> None:
    """Count a token that did not work as a failed login of its address, and slow the next."""
    remote = request.remote or "-"
    try:
        delay = request.app[AUTH_THROTTLE_KEY].failed(remote, None)
    except AuthLockedOutError:
        log.info("event=console_token_refused remote=%s", remote)
        raise
    log.info("event=console_token_failed remote=%s reason=%r", remote, error.message)
    if delay:
        await asyncio.sleep(delay)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    if request.method != "GET":
        raise MethodError(f"{request.method} is not allowed on {request.path}: use GET")
    check_origin(request)
    ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT_SECONDS)
    consoles = platform_of(request).consoles
    token = query_parameter(request, "token") or ""
    signed_in = _browser_session(request)
    try:
        if not ws.can_prepare(request).ok:
            # A plain GET never uses the token up: it says why the token would not work (the
            # console page asks so after a refused WebSocket, whose refusal it cannot read).
            consoles.check_token(token, signed_in)
            raise UsageError("Expected a WebSocket upgrade (subprotocol binary)")
        grant = consoles.use_token(token, signed_in)
    except ConsoleTokenError as error:
        await _token_failed(request, error)
        raise
    access = access_now(platform_of(request), grant.user, grant.session)
    async with consoles.open_session(grant) as session:
        await prepare(request, ws)
        browser = WebSocketStream(ws)
        try:
            async with asyncio.timeout(GREETING_SECONDS):
                await rfb.greet_without_auth(browser.read_exactly, browser.write)
        except (rfb.RfbError, TimeoutError, ConnectionError) as error:
            log.info("event=console_greeting_failed server=%s error=%r", session.server, error)
            await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"RFB greeting failed")
            return ws
        if browser.buffer:  # what the browser sent past its greeting (its ClientInit)
            await session.write(browser.buffer)
        await _bridge(ws, session, _access_ends(request, access))
    return ws


async def _access_ends(request: web.Request, access: Access) -> None:
    """Return once `access` no longer holds (the key rotated, the session ended)."""
    platform = platform_of(request)
    while still_holds(platform, access):
        await asyncio.sleep(ACCESS_CHECK_SECONDS)


class WebSocketStream:
    """Exact byte counts from a WebSocket whose binary messages may split RFB anywhere, for
    the greeting; what is read past it stays in `buffer`."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self.buffer = b""

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            message = await self._ws.receive()
            if message.type != WSMsgType.BINARY:
                raise ConnectionError("The browser closed the console during its greeting")
            self.buffer += message.data
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def write(self, data: bytes) -> None:
        await self._ws.send_bytes(data)


async def _bridge(
    ws: web.WebSocketResponse, session: ConsoleSession, shut_out: Coroutine[Any, Any, None]
) -> None:
    """Carry bytes both ways until either side closes, the session is ended, or `shut_out`
    returns (the access that opened the console no longer holds)."""
    to_vnc = asyncio.create_task(_browser_to_vnc(ws, session))
    to_browser = asyncio.create_task(_vnc_to_browser(ws, session))
    watch = asyncio.create_task(shut_out)
    tasks = (to_vnc, to_browser, watch)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if watch in done and watch.exception() is None:
        log.info("event=console_shut_out server=%s user=%s", session.server, session.user)
        await ws.close(
            code=WSCloseCode.POLICY_VIOLATION,
            message=b"Signed out: the dashboard session ended or the key was rotated",
        )
    elif to_browser in done:  # VNC ended first: the server stopped (or its VNC went)
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"The server's console ended")
    else:
        await ws.close()


async def _browser_to_vnc(ws: web.WebSocketResponse, session: ConsoleSession) -> None:
    async for message in ws:
        if message.type != WSMsgType.BINARY:
            return  # RFB is bytes: anything else ends the session
        try:
            await session.write(message.data)  # waits while VNC is slow to take it
        except ConnectionError:
            return


async def _vnc_to_browser(ws: web.WebSocketResponse, session: ConsoleSession) -> None:
    while data := await session.read():
        await ws.send_bytes(data)  # waits while the browser is slow to take it
