"""Handlers of the account commands: the caller's balance, limits and usage (docs/api.md §7)."""

from aiohttp import web

from openhosting.api.context import platform_of, user_of
from openhosting.wire.payload import Properties


async def info(request: web.Request) -> Properties:
    return Properties(platform_of(request).billing.account_info(user_of(request)))
