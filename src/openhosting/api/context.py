"""What a request handler reaches through the request: the platform, the caller, and the
cap on drive transfers."""

from aiohttp import web

from openhosting.api.abuse import TransferLimiter
from openhosting.services.platform import Platform

PLATFORM_KEY: web.AppKey[Platform] = web.AppKey("platform", Platform)
USER_KEY: web.RequestKey[str] = web.RequestKey("user", str)
TRANSFER_LIMITER_KEY: web.AppKey[TransferLimiter] = web.AppKey("transfer_limiter", TransferLimiter)


def platform_of(request: web.Request) -> Platform:
    return request.app[PLATFORM_KEY]


def user_of(request: web.Request) -> str:
    """The UUID of the authenticated caller."""
    user: str = request[USER_KEY]
    return user


def transfer_limiter_of(request: web.Request) -> TransferLimiter:
    return request.app[TRANSFER_LIMITER_KEY]
