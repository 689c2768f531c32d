"""HTTP Basic authentication of every request (API.md §1)."""

import asyncio
import base64
import binascii
import logging

from aiohttp import web

from openhosting.api.abuse import AuthThrottle, UserRateLimiter
from openhosting.api.context import USER_KEY, platform_of
from openhosting.errors import AuthError

log = logging.getLogger("openhosting.auth")

AUTH_THROTTLE_KEY: web.AppKey[AuthThrottle] = web.AppKey("auth_throttle", AuthThrottle)
RATE_LIMITER_KEY: web.AppKey[UserRateLimiter] = web.AppKey("rate_limiter", UserRateLimiter)


def parse_basic_credentials(header: str | None) -> tuple[str, str]:
    """The (username, password) of a Basic `Authorization` header; AuthError if unusable."""
    if not header:
        raise AuthError("Authentication required: HTTP Basic with your user UUID and API key")
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


async def authenticate_request(request: web.Request) -> None:
    """Authenticate the request (AuthError if it fails) and record the user's UUID.

    An address that keeps failing waits longer before each check, then is refused outright
    for a while; a user over their request rate is refused with 429.
    """
    throttle = request.app[AUTH_THROTTLE_KEY]
    remote = request.remote or "-"
    delay = throttle.delay_before(remote)
    if delay:
        await asyncio.sleep(delay)
    try:
        username, password = parse_basic_credentials(request.headers.get("Authorization"))
        user = platform_of(request).accounts.authenticate(username.lower(), password)
    except AuthError:
        throttle.failed(remote)
        log.info("event=auth_failed remote=%s path=%s", remote, request.raw_path)
        raise
    throttle.succeeded(remote)
    request.app[RATE_LIMITER_KEY].take(user)
    request[USER_KEY] = user
