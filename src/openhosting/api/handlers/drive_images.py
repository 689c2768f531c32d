"""Handlers of imaging and the standard drive library (docs/api.md §4)."""

from aiohttp import web

from openhosting.api.context import platform_of, user_of
from openhosting.wire.payload import PropertiesList, ValueList


async def image(request: web.Request) -> None:
    """Accept an imaging job (204 at once); it runs in the background. The body is ignored:
    clients send an empty one, typed as anything."""
    platform_of(request).imaging.submit(
        user_of(request),
        request.match_info["drive"].lower(),
        request.match_info["source"].lower(),
        request.match_info.get("conversion", ""),
    )


async def list_standard(request: web.Request) -> ValueList:
    platform = platform_of(request)
    uuids = await platform.store.run(platform.standard_drives.list_uuids)
    return ValueList(("drive",), [{"drive": uuid} for uuid in uuids])


async def info_standard(request: web.Request) -> PropertiesList:
    platform = platform_of(request)
    return PropertiesList(await platform.store.run(platform.standard_drives.info_all))
