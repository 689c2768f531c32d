"""Dashboard sessions: the one owner of what a signed-in browser holds.

A browser signs in once with the user's UUID and secret key (checked by Accounts, as Basic
authentication is) and gets a session token instead, kept in an HttpOnly cookie, so the key
itself never stays in the browser. The token is random (256 bits) and expires; the database
keeps only its SHA-256, so several daemons could share it. Each session also has a CSRF
token, derived from the session token (so it is not stored), which the dashboard's page
reads once and sends with every change; another site's page can neither read it nor guess it.
"""

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from openhosting.errors import AuthError
from openhosting.store import web_sessions as session_store

log = logging.getLogger("openhosting.sessions")


class SessionError(AuthError):
    """The session cookie is unknown, expired or signed out: 401, counted as a failed login
    of its address."""


@dataclass(frozen=True)
class WebSession:
    """A signed-in browser: whose it is, until when, the token its changes must carry, and
    its id (its cookie's SHA-256, as stored), what the console tokens it asks for are bound to."""

    user: str
    expires: float  # seconds since the epoch
    csrf: str
    id: str


def session_hash(token: str) -> str:
    """What the database keeps of a session token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The CSRF token of the session `token` (an HMAC of it: nothing more to store)."""
    return hmac.new(token.encode(), b"openhosting-csrf", hashlib.sha256).hexdigest()


class WebSessions:
    """Open, check and end dashboard sessions."""

    def __init__(
        self,
        engine: Engine,
        session_seconds: int,
        clock: Callable[[], float] = time.time,
        max_per_user: int = 20,
    ) -> None:
        self._engine = engine
        self._seconds = session_seconds
        self._clock = clock
        self._max_per_user = max(1, max_per_user)

    def open(self, user: str) -> tuple[str, WebSession]:
        """A new session for `user` (already authenticated): its token and what it holds.
        Past the user's `max_per_user` live sessions, their oldest end (signed out)."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + self._seconds
        with self._engine.begin() as connection:
            session_store.prune_expired(connection, now)
            session_store.insert_session(connection, session_hash(token), user, now, expires)
            ended = session_store.delete_oldest_sessions_of(
                connection, user, session_hash(token), self._max_per_user
            )
        log.info("event=session_opened user=%s", user)
        if ended:
            log.info(
                "event=sessions_ended user=%s count=%s reason=max_sessions_per_user", user, ended
            )
        return token, WebSession(user, expires, csrf_token(token), session_hash(token))

    def check(self, token: str) -> WebSession:
        """The live session of `token`; SessionError if there is none."""
        if not token:
            raise SessionError("Not signed in: sign in with your user UUID and secret API key")
        with self._engine.connect() as connection:
            found = session_store.live_session(connection, session_hash(token), self._clock())
        if found is None:
            raise SessionError("Session expired or signed out: sign in again")
        user, expires = found
        return WebSession(user, expires, csrf_token(token), session_hash(token))

    def live(self, session_id: str) -> bool:
        """Whether the session `session_id` (a WebSession's id) is still live: not signed out,
        expired, or ended by its user's key rotation or deletion. What a stream opened with
        the session's cookie asks as it goes: the cookie was checked only when it opened."""
        with self._engine.connect() as connection:
            found = session_store.live_session(connection, session_id, self._clock())
        return found is not None

    def end(self, token: str) -> None:
        """Sign the session `token` out, so that its cookie opens nothing any more."""
        with self._engine.begin() as connection:
            session_store.delete_session(connection, session_hash(token))

    def end_all(self, user: str) -> int:
        """Sign out every browser of `user`: how many sessions ended."""
        with self._engine.begin() as connection:
            return session_store.delete_sessions_of(connection, user)
