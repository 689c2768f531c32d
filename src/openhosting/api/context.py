"""What a request handler reaches through the request: the platform, the caller, the cap on
drive transfers, and what monitoring needs (metrics, readiness, the request's id)."""

import asyncio

from aiohttp import web

from openhosting.api.abuse import TransferLimiter
from openhosting.api.body_readers import BodyReaders
from openhosting.api.metrics import PlatformMetrics
from openhosting.services.accounts.web_sessions import WebSession
from openhosting.services.platform import Platform

PLATFORM_KEY: web.AppKey[Platform] = web.AppKey("platform", Platform)
USER_KEY: web.RequestKey[str] = web.RequestKey("user", str)
# The dashboard session a request was authenticated by (none for Basic authentication).
SESSION_KEY: web.RequestKey[WebSession] = web.RequestKey("session", WebSession)
# Set when the request's session cookie opened no session (its answer deletes the cookie).
DEAD_SESSION_KEY: web.RequestKey[bool] = web.RequestKey("dead_session", bool)
TRANSFER_LIMITER_KEY: web.AppKey[TransferLimiter] = web.AppKey("transfer_limiter", TransferLimiter)
METRICS_KEY: web.AppKey[PlatformMetrics] = web.AppKey("metrics", PlatformMetrics)
# Set once the daemon has adopted its VMs and listens: what `/ready` answers.
READINESS_KEY: web.AppKey[asyncio.Event] = web.AppKey("readiness", asyncio.Event)
# The request bodies being read, ended at the daemon's stop.
BODY_READERS_KEY: web.AppKey[BodyReaders] = web.AppKey("body_readers", BodyReaders)
# A request's id: in its log lines and its answer's X-Request-Id header.
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)


def platform_of(request: web.Request) -> Platform:
    return request.app[PLATFORM_KEY]


def user_of(request: web.Request) -> str:
    """The UUID of the authenticated caller."""
    user: str = request[USER_KEY]
    return user


def session_of(request: web.Request) -> WebSession | None:
    """The dashboard session that authenticated the request; None for Basic authentication."""
    return request.get(SESSION_KEY)


def transfer_limiter_of(request: web.Request) -> TransferLimiter:
    return request.app[TRANSFER_LIMITER_KEY]
