"""Authentication of every request: HTTP Basic (docs/api.md §1), or the dashboard's session
cookie (api/sessions.py)."""

import asyncio
import base64
import binascii
import logging

from aiohttp import hdrs, web

from openhosting.api.abuse import AuthLockedOutError, AuthThrottle, UserRateLimiter, user_tried
from openhosting.api.context import (
    DEAD_SESSION_KEY,
    PLATFORM_KEY,
    SESSION_KEY,
    USER_KEY,
    platform_of,
)
from openhosting.api.sessions import SESSION_COOKIE, check_csrf
from openhosting.api.verified_headers import VerifiedHeaders
from openhosting.errors import AuthError
from openhosting.services.accounts.web_sessions import SessionError, WebSession

log = logging.getLogger("openhosting.auth")

AUTH_THROTTLE_KEY: web.AppKey[AuthThrottle] = web.AppKey("auth_throttle", AuthThrottle)
RATE_LIMITER_KEY: web.AppKey[UserRateLimiter] = web.AppKey("rate_limiter", UserRateLimiter)
VERIFIED_HEADERS_KEY: web.AppKey[VerifiedHeaders] = web.AppKey("verified_headers", VerifiedHeaders)


def parse_basic_credentials(header: str | None) -> tuple[str, str]:
    """The (username, password) of a Basic `Authorization` header; AuthError if unusable."""
    if not header:
        raise AuthError("Authentication required: HTTP Basic with your user UUID and API key")
    return _parse_basic(header)


# Not cached: a header verified once is known by its digest (api/verified_headers.py), which
# keeps no secret in the clear; this runs again only after a commit.
def _parse_basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise AuthError("Authentication failed: only HTTP Basic authentication is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        # ValueError: b64decode refuses non-ASCII text (`Basic ä`); UnicodeDecodeError, a
        # subclass, credentials that are not UTF-8. Both are a failed login, counted as one.
        raise AuthError("Authentication failed: malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise AuthError("Authentication failed: malformed Basic credentials")
    return username, password


def known_basic_user(
    request: web.Request, verified: VerifiedHeaders, limiter: UserRateLimiter
) -> bool:
    """The common case of `authenticate_request`, without a coroutine: the request's Basic
    header was verified already and nothing has been committed since; its user is recorded
    (and their rate spent). False when the full check must run (it then does all of it)."""
    headers = request.headers
    header = headers.get(hdrs.AUTHORIZATION)
    if header is None or hdrs.EXPECT in headers:
        return False
    user = verified.user_of(header)
    if user is None:
        return False
    limiter.take(user)
    request[USER_KEY] = user
    return True


async def authenticate_request(request: web.Request) -> None:
    """Authenticate the request (AuthError if it fails) and record the user's UUID.

    The credentials are checked first and the right key always gets in; a failure waits
    longer the more its address, its user or the pair of both have failed, and past a limit
    is refused with Retry-After. A user over their request rate is refused with 429.
    """
    headers = request.headers
    # (The header first: looking for a key a request lacks costs an exception.)
    if hdrs.EXPECT in headers and USER_KEY in request:
        return  # already authenticated by the `Expect: 100-continue` handler
    header = headers.get(hdrs.AUTHORIZATION)
    if header is None and SESSION_COOKIE in request.cookies:
        session = await authenticate_session(request)
        request[USER_KEY] = session.user
        request[SESSION_KEY] = session
        return
    app = request.app
    verified = app[VERIFIED_HEADERS_KEY]
    user = verified.user_of(header) if header is not None else None
    if user is None:
        user = await _check_basic(request, header, verified)
    app[RATE_LIMITER_KEY].take(user)
    request[USER_KEY] = user


async def _check_basic(request: web.Request, header: str | None, verified: VerifiedHeaders) -> str:
    """The user whose key `header` carries, checked against the database (remembered in
    `verified` until the next commit); a failure counted as a failed login, AuthError."""
    username = None
    try:
        username, password = parse_basic_credentials(header)
        platform = request.app[PLATFORM_KEY]
        version = verified.version()
        user = await platform.store.run(platform.accounts.authenticate, username.lower(), password)
    except AuthError:
        if not header:
            raise  # no guess at all: the challenge half of Basic authentication (RFC 7617)
        await count_failed_login(request, username, "auth")
        raise
    if header:  # (always, once parsed)
        verified.remember(header, user, version)
    return user


async def count_failed_login(request: web.Request, username: str | None, event: str) -> None:
    """Count a failed login of the request's address (and of `username`, the user tried):
    answered later the more they failed, then refused with Retry-After (AuthLockedOutError).
    Basic authentication, dashboard sign-ins and dead session cookies share the counts."""
    remote = request.remote or "-"
    # The raw path, still percent-encoded: a decoded %0A would let anyone write lines of
    # their own into the log. The user only when it is a UUID, for the same reason.
    where = f"remote={remote} user={user_tried(username) or '-'} path={request.raw_path}"
    try:
        delay = request.app[AUTH_THROTTLE_KEY].failed(remote, username)
    except AuthLockedOutError:
        log.info("event=%s_refused %s", event, where)
        raise
    log.info("event=%s_failed %s", event, where)
    if delay:
        await asyncio.sleep(delay)


async def authenticate_session(request: web.Request) -> WebSession:
    """The live dashboard session of the request's cookie (AuthError if none; a cookie that
    opens nothing counts as a failed login), with its CSRF token checked on any request that
    may change something (403). The user's request rate applies as to Basic requests."""
    token = request.cookies.get(SESSION_COOKIE, "")
    try:
        session = platform_of(request).web_sessions.check(token)
    except SessionError:
        if token:
            request[DEAD_SESSION_KEY] = True  # its 401 deletes the cookie (api/sessions.py)
            await count_failed_login(request, None, "session")
        raise
    check_csrf(request, session)
    request.app[RATE_LIMITER_KEY].take(session.user)
    return session
