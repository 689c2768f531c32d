"""Web consoles: the one owner of console tokens and of the console sessions under way.

`issue` gives the owner of a running server with a VNC password a token: random (256 bits),
single-use, short-lived, bound to that server and user, kept in the database only as its
SHA-256 (so several daemons could share it). A token asked for by a dashboard session is
bound to that session too: only a WebSocket carrying the same session's cookie (which a
browser sends on a same-origin WebSocket, never from another site) can use it, so a token
copied out of that browser opens nothing elsewhere. A token asked with Basic authentication
(an API client, which may hand the URL to any browser) stays a bearer token, single-use and
short-lived, but a browser signed in to the dashboard as another user cannot use it.
`use_token` uses the token up (atomically: of two uses, one wins); `open_session` connects
to the server's VNC itself, on the host's side, so the VNC port need not be reachable by the
browser, and logs in there with the server's VNC password (inside VeNCrypt X509 for
`vnc:tls on`): the password never reaches the browser, which is offered RFB without
authentication (vnc/rfb.py). A session ends when either side closes or when its server stops:
the platform's event feed says so, and `end_sessions` closes its VNC connection.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from openhosting.errors import AuthError, BusyError, MissingError
from openhosting.services.accounts.web_sessions import WebSession
from openhosting.services.events import Event
from openhosting.services.servers.servers import Servers
from openhosting.services.servers.vnc import VncTarget
from openhosting.store import console_tokens as token_store
from openhosting.store import servers as server_store
from openhosting.store.records import ConsoleTokenRecord, ServerRecord
from openhosting.vnc import rfb

log = logging.getLogger("openhosting.consoles")

# What a VNC connection may take to open and log in: loopback (or the host's bridge address),
# at once; a TLS handshake under TCG load takes a little longer.
VNC_CONNECT_SECONDS = 5.0
# A server's status that means its VM is gone (see ServerLifecycle.vm_exited).
ENDED_STATUSES = frozenset({"stopped", "dead", "dumped"})


class ConsoleTokenError(AuthError):
    """The console token is missing, unknown, used or expired: 401, counted as a failed
    login of its address."""


@dataclass(frozen=True)
class ConsoleGrant:
    """What a used token opens: the console of `server`, for `user`; `session`, the id of
    the dashboard session the token was bound to (None: a bearer token), which the console
    lasts no longer than."""

    server: str
    user: str
    session: str | None = None


@dataclass(frozen=True)
class ConsoleTicket:
    """What `POST /servers/S/console` answers (with the page's URL)."""

    token: str
    expires: int  # seconds since the epoch


def token_hash(token: str) -> str:
    """What the database keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _check_holder(row: ConsoleTokenRecord, browser: WebSession | None) -> None:
    """ConsoleTokenError unless `browser` (the live dashboard session a WebSocket carries,
    if any) may use the token in `row`: the session it is bound to, or, for a bearer token,
    any holder but a browser signed in as another user."""
    if row.session_hash is not None:
        if browser is None or not hmac.compare_digest(browser.id, row.session_hash):
            raise ConsoleTokenError(
                "Console token of another dashboard session: open the console from your own"
                " dashboard (its token opens it in that browser only)"
            )
    elif browser is not None and browser.user != row.user:
        raise ConsoleTokenError(
            "Console token of another user: this browser is signed in as someone else"
        )


class ConsoleSession:
    """One WebSocket's connection to one server's VNC: the bytes both ways, and its end."""

    def __init__(
        self, server: str, user: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.user = server, user
        self._reader, self._writer = reader, writer

    async def read(self, limit: int = 64 * 1024) -> bytes:
        """What VNC sent next; b"" once it (or the session) has ended."""
        with contextlib.suppress(ConnectionError):
            return await self._reader.read(limit)
        return b""

    async def write(self, data: bytes) -> None:
        """Send `data` to VNC, waiting while VNC is slow to take it (backpressure)."""
        self._writer.write(data)
        await self._writer.drain()

    def end(self) -> None:
        """Close the VNC connection: `read` then answers b"" and the bridge winds down."""
        self._writer.close()
        self._reader.feed_eof()


class Consoles:
    """Console tokens and the sessions they open."""

    def __init__(
        self,
        engine: Engine,
        servers: Servers,
        token_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._servers = servers
        self._vnc = servers.lifecycle.vnc  # where each server's VNC is, and how to log in
        self._token_seconds = token_seconds
        self._clock = clock
        self._sessions: dict[str, set[ConsoleSession]] = {}

    # -- tokens ------------------------------------------------------------------------

    def issue(self, user: str, server: str, session: WebSession | None = None) -> ConsoleTicket:
        """A token for the console of the user's running server `server`, bound to the
        dashboard `session` that asks for it (None: asked with Basic authentication)."""
        with self._engine.connect() as connection:
            row = server_store.get_server(connection, server)
        if row is None or row.user != user:
            raise MissingError(f"Server {server} could not be found")
        self._vnc_target(row)  # refuses a server with no console now
        token = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + self._token_seconds
        with self._engine.begin() as connection:
            token_store.prune_expired(connection, now)
            token_store.insert_token(
                connection,
                ConsoleTokenRecord(
                    token_hash=token_hash(token),
                    server=server,
                    user=user,
                    expires=expires,
                    session_hash=session.id if session is not None else None,
                ),
            )
        bound = "session" if session is not None else "bearer"
        log.info("event=console_token_issued user=%s server=%s bound=%s", user, server, bound)
        return ConsoleTicket(token=token, expires=int(expires))

    def _vnc_target(self, row: ServerRecord) -> VncTarget:
        """Where the VNC of the server in `row` listens and how to log in; BusyError if it
        has none now."""
        uuid = row.uuid
        if uuid not in self._servers.lifecycle.active:
            raise BusyError(f"Server {uuid} is not active: its console opens once it runs")
        return self._vnc.target(row)

    def check_token(self, token: str, browser: WebSession | None = None) -> None:
        """ConsoleTokenError naming why `token` cannot be used by `browser` (the dashboard
        session its request carries, if any), without using it up: what the console page
        asks after its WebSocket was refused, to say why in words."""
        if not token:
            raise ConsoleTokenError("Console token required: ?token= from POST /servers/S/console")
        with self._engine.connect() as connection:
            row = token_store.get_token(connection, token_hash(token))
        if row is None:
            raise ConsoleTokenError("Unknown console token")
        _check_holder(row, browser)
        if row.used_at is not None or row.expires <= self._clock():
            reason = "used" if row.used_at is not None else "expired"
            raise ConsoleTokenError(f"Console token {reason}: ask POST /servers/S/console again")

    def use_token(self, token: str, browser: WebSession | None = None) -> ConsoleGrant:
        """Use `token` up: what it opens; ConsoleTokenError if it cannot be used, or not by
        `browser` (the dashboard session the WebSocket carries, if any): a token refused to
        its holder is not used up, so a thief cannot spend its owner's token either."""
        if not token:
            raise ConsoleTokenError("Console token required: ?token= from POST /servers/S/console")
        hashed = token_hash(token)
        now = self._clock()
        with self._engine.begin() as connection:
            found = token_store.get_token(connection, hashed)
            if found is None:
                raise ConsoleTokenError("Unknown console token")
            _check_holder(found, browser)  # a token's binding never changes: read it first
            used = token_store.use_token(connection, hashed, now)
            row = token_store.get_token(connection, hashed)
        if row is None:
            raise ConsoleTokenError("Unknown console token")
        if not used:
            reason = "used" if row.used_at is not None else "expired"
            raise ConsoleTokenError(f"Console token {reason}: ask POST /servers/S/console again")
        return ConsoleGrant(server=row.server, user=row.user, session=row.session_hash)

    # -- sessions ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_session(self, grant: ConsoleGrant) -> AsyncIterator[ConsoleSession]:
        """Connect to the VNC of the server `grant` opens and log in there, for the caller's
        `with` block; the session's stream is then at the RFB ClientInit. Refused (nothing
        connected) if the server is no longer its user's or not running with a console."""
        server, user = grant.server, grant.user
        with self._engine.connect() as connection:
            row = server_store.get_server(connection, server)
        if row is None or row.user != user:
            raise MissingError(f"Server {server} could not be found")
        target = self._vnc_target(row)
        reader, writer = await self._log_in(server, target)
        session = ConsoleSession(server, user, reader, writer)
        self._sessions.setdefault(server, set()).add(session)
        log.info("event=console_opened user=%s server=%s", user, server)
        try:
            yield session
        finally:
            sessions = self._sessions.get(server, set())
            sessions.discard(session)
            if not sessions:
                self._sessions.pop(server, None)
            session.end()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("event=console_closed user=%s server=%s", user, server)

    async def _log_in(
        self, server: str, target: VncTarget
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(VNC_CONNECT_SECONDS):
                reader, writer = await asyncio.open_connection(target.host, target.port)
                tls = self._vnc.tls_context() if target.tls else None
                await rfb.log_in(reader, writer, target.password, tls, target.host)
        except (OSError, TimeoutError, rfb.RfbError) as error:
            if writer is not None:
                writer.close()
            reason = str(error) or type(error).__name__
            raise BusyError(f"Server {server}'s console could not be reached: {reason}") from None
        return reader, writer

    def sessions_of(self, server: str) -> int:
        """How many console sessions of `server` are open."""
        return len(self._sessions.get(server, ()))

    def end_sessions(self, server: str) -> None:
        """End every console session of `server` (its VM is gone)."""
        for session in list(self._sessions.get(server, ())):
            session.end()

    def observe_event(self, event: Event) -> None:
        """An event-feed listener: a server whose VM ended loses its consoles."""
        if event.type != "server":
            return
        if event.change == "destroyed" or (
            event.change == "status" and event.fields.get("status") in ENDED_STATUSES
        ):
            self.end_sessions(event.object)
