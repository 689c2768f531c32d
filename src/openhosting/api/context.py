"""What a request handler reaches through the request: the platform and the caller."""

from aiohttp import web

from openhosting.services.platform import Platform

PLATFORM_KEY: web.AppKey[Platform] = web.AppKey("platform", Platform)
USER_KEY: web.RequestKey[str] = web.RequestKey("user", str)


def platform_of(request: web.Request) -> Platform:
    return request.app[PLATFORM_KEY]


def user_of(request: web.Request) -> str:
    """The UUID of the authenticated caller."""
    user: str = request[USER_KEY]
    return user
