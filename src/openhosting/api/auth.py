"""HTTP Basic authentication of every request (API.md §1)."""

import base64
import binascii
import logging

from aiohttp import web

from openhosting.api.context import USER_KEY, platform_of
from openhosting.errors import AuthError

log = logging.getLogger("openhosting.auth")


def parse_basic_credentials(header: str | None) -> tuple[str, str]:
    """The (username, password) of a Basic `Authorization` header; AuthError if unusable."""
    if not header:
        raise AuthError("Authentication required: HTTP Basic with your user UUID and API key")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise AuthError("Authentication failed: only HTTP Basic authentication is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("Authentication failed: malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise AuthError("Authentication failed: malformed Basic credentials")
    return username, password


def authenticate_request(request: web.Request) -> None:
    """Authenticate the request (AuthError if it fails) and record the user's UUID."""
    try:
        username, password = parse_basic_credentials(request.headers.get("Authorization"))
        user = platform_of(request).accounts.authenticate(username.lower(), password)
    except AuthError:
        log.info("event=auth_failed remote=%s path=%s", request.remote, request.path)
        raise
    request[USER_KEY] = user
