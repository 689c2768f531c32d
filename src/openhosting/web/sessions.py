"""Signing in and out of the dashboard.

`POST /dashboard/session` takes `{"user": UUID, "key": SECRET}` (JSON: a form of another site
cannot send it) from the daemon's own page, checks the key as Basic authentication does, with
the same failure counts and limits, and answers the session: the cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS, expiring) and, in the body, the CSRF token the page sends
with every change. The key is not kept anywhere. `GET /dashboard/session` answers the same
for the cookie's session; `POST /dashboard/session/end` signs it out on the daemon's side.
"""

import json
import logging

from aiohttp import web

from openhosting.api.auth import RATE_LIMITER_KEY, authenticate_session, count_failed_login
from openhosting.api.context import platform_of
from openhosting.api.negotiation import read_body_capped
from openhosting.api.sessions import SESSION_COOKIE, check_same_origin, secure_cookies
from openhosting.errors import AuthError, MethodError, UsageError
from openhosting.services.accounts.web_sessions import WebSession

log = logging.getLogger("openhosting.sessions")

# A UUID and a key take under 200 bytes: a sign-in body is never large.
SIGN_IN_MAX_BYTES = 4096


def _answer(session: WebSession, status: int = 200) -> web.Response:
    body = {"user": session.user, "csrf": session.csrf, "expires": int(session.expires)}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def _credentials(request: web.Request) -> tuple[str, str]:
    if request.content_type != "application/json":
        raise UsageError('Sign in with a JSON body: {"user": UUID, "key": SECRET}')
    try:
        body = json.loads(await read_body_capped(request, SIGN_IN_MAX_BYTES))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise UsageError("Sign in with a JSON body: invalid JSON") from None
    if not isinstance(body, dict):
        raise UsageError("Sign in with a JSON object: user and key")
    user, key = body.get("user"), body.get("key")
    if not isinstance(user, str) or not isinstance(key, str) or not user or not key:
        raise UsageError("Sign in needs your user UUID and secret API key")
    return user.strip(), key.strip()


async def session(request: web.Request) -> web.StreamResponse:
    """GET: the cookie's session. POST: sign in."""
    if request.method in ("GET", "HEAD"):
        return _answer(await authenticate_session(request))
    if request.method != "POST":
        raise MethodError(f"{request.method} is not allowed on {request.path}")
    check_same_origin(request)
    username, key = await _credentials(request)
    platform = platform_of(request)
    try:
        user = platform.accounts.authenticate(username.lower(), key)
    except AuthError:
        await count_failed_login(request, username, "sign_in")
        raise
    request.app[RATE_LIMITER_KEY].take(user)
    token, opened = platform.web_sessions.open(user)
    log.info("event=signed_in user=%s remote=%s", user, request.remote or "-")
    platform.audit.record(user, request.remote or "", "POST", request.path, 200, "")
    response = _answer(opened)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=platform.config.api.session_seconds,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )
    return response


async def end(request: web.Request) -> web.StreamResponse:
    """Sign out: the session ends on the daemon's side, and the cookie is dropped."""
    if request.method != "POST":
        raise MethodError(f"{request.method} is not allowed on {request.path}: use POST")
    signed_in = await authenticate_session(request)  # with its CSRF token
    platform = platform_of(request)
    platform.web_sessions.end(request.cookies[SESSION_COOKIE])
    log.info("event=signed_out user=%s", signed_in.user)
    platform.audit.record(signed_in.user, request.remote or "", "POST", request.path, 204, "")
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
