"""Handlers of the server commands (docs/api.md §5)."""

import asyncio

from aiohttp import web

from openhosting.api.context import platform_of, user_of
from openhosting.api.negotiation import read_properties
from openhosting.wire.payload import Properties, PropertiesList, ValueList


def _server(request: web.Request) -> str:
    return request.match_info["server"].lower()


async def _body(request: web.Request) -> dict[str, str]:
    return await read_properties(request, platform_of(request).config.api.max_body_bytes)


async def list_servers(request: web.Request) -> ValueList:
    platform = platform_of(request)
    rows = await platform.store.run(platform.servers.list_rows, user_of(request))
    return ValueList(("server", "cpu", "mem"), rows)


async def info_all(request: web.Request) -> PropertiesList:
    # A kept answer without a coroutine more: a µs or two of a request of about twenty.
    servers, user = platform_of(request).servers, user_of(request)
    kept = servers.kept_info_payload(user)
    return kept if kept is not None else await servers.info_payload(user)


async def info(request: web.Request) -> Properties:
    return Properties(await platform_of(request).servers.info(user_of(request), _server(request)))


async def create(request: web.Request) -> Properties:
    servers = platform_of(request).servers
    return Properties(await servers.create(user_of(request), await _body(request), start=True))


async def create_stopped(request: web.Request) -> Properties:
    servers = platform_of(request).servers
    return Properties(await servers.create(user_of(request), await _body(request), start=False))


async def set_server(request: web.Request) -> Properties:
    servers = platform_of(request).servers
    properties = await _body(request)
    return Properties(await servers.set_config(user_of(request), _server(request), properties))


async def start(request: web.Request) -> None:
    await platform_of(request).servers.start(user_of(request), _server(request))


async def stop(request: web.Request) -> None:
    await platform_of(request).servers.stop(user_of(request), _server(request))


async def shutdown(request: web.Request) -> None:
    await platform_of(request).servers.shutdown(user_of(request), _server(request))


async def reset(request: web.Request) -> None:
    await platform_of(request).servers.reset(user_of(request), _server(request))


async def destroy(request: web.Request) -> None:
    await platform_of(request).servers.destroy(user_of(request), _server(request))


async def serial_log(request: web.Request) -> web.Response:
    """The server's serial log as its guest wrote it: bytes, not necessarily text."""
    servers = platform_of(request).servers
    content = await asyncio.to_thread(servers.serial_log, _server(request), user_of(request))
    # Guest output is hostile: never let a browser take it for HTML.
    headers = {"X-Content-Type-Options": "nosniff"}
    return web.Response(body=content, content_type="text/plain", headers=headers)
