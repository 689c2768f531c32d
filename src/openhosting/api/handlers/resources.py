"""Handlers of the resource commands (docs/api.md §6): IP addresses and VLANs."""

from aiohttp import web

from openhosting.api.context import platform_of, user_of
from openhosting.api.negotiation import read_properties
from openhosting.wire.payload import Properties, PropertiesList, ValueList


def _type(request: web.Request) -> str | None:
    kind = request.match_info.get("type")
    return kind.lower() if kind is not None else None


def _path(request: web.Request) -> tuple[str, str]:
    return request.match_info["type"].lower(), request.match_info["resource"]


async def _body(request: web.Request) -> dict[str, str]:
    return await read_properties(request, platform_of(request).config.api.max_body_bytes)


async def list_resources(request: web.Request) -> ValueList:
    platform = platform_of(request)
    rows = await platform.store.run(platform.resources.list_rows, user_of(request), _type(request))
    return ValueList(("type", "resource"), rows)


async def info_all(request: web.Request) -> PropertiesList:
    resources = platform_of(request).resources
    return PropertiesList(await resources.info_all(user_of(request), _type(request)))


async def info(request: web.Request) -> Properties:
    kind, resource = _path(request)
    platform = platform_of(request)
    return Properties(
        await platform.store.run(platform.resources.info, user_of(request), kind, resource)
    )


async def create(request: web.Request) -> Properties:
    platform = platform_of(request)
    kind = request.match_info["type"].lower()
    properties = await _body(request)
    # Through the store's executor (a worker thread on PostgreSQL): the limit's check and the
    # insert are one transaction holding the user's row, safe beside another node's.
    return Properties(
        await platform.store.run(platform.resources.create, user_of(request), kind, properties)
    )


async def set_resource(request: web.Request) -> Properties:
    kind, resource = _path(request)
    properties = await _body(request)
    platform = platform_of(request)
    return Properties(
        await platform.store.run(
            platform.resources.set, user_of(request), kind, resource, properties
        )
    )


async def destroy(request: web.Request) -> None:
    kind, resource = _path(request)
    platform = platform_of(request)
    # Its holders checked and its row deleted in one transaction holding the row: in a worker
    # thread on PostgreSQL, safe beside a server start (which holds the row too).
    await platform.store.run(platform.resources.destroy, user_of(request), kind, resource)
