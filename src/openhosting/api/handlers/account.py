"""Handlers of the account commands: the caller's balance, limits and usage (docs/api.md §7)."""

from aiohttp import web

from openhosting.api.context import platform_of, user_of
from openhosting.api.query import query_parameter
from openhosting.errors import UsageError
from openhosting.wire.payload import Properties, PropertiesList

MAX_DAYS = 366


def _days(request: web.Request) -> int:
    text = query_parameter(request, "days")
    if text is None:
        return 30
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise UsageError(f"Invalid days {text[:20]!r}: a number of days from 1 to {MAX_DAYS}")
    return int(text)


async def info(request: web.Request) -> Properties:
    platform = platform_of(request)
    return Properties(await platform.store.run(platform.billing.account_info, user_of(request)))


async def usage(request: web.Request) -> PropertiesList:
    """The caller's metered usage per day (UTC), over the last `?days=N` days (30)."""
    platform = platform_of(request)
    days = await platform.store.run(platform.billing.usage_days, user_of(request), _days(request))
    return PropertiesList(days)
