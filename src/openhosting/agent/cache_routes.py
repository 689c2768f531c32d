"""The host agent's image cache routes: what the control plane asks of this host's copies of
standard drives (agent/image_cache.py), over the agent's mutual TLS, control role only
(agent/server.py's middleware runs before these). A copy is filled on a byte stream of its
own (agent/drive_streams.py, action `cache_fill`), not here.

- `POST /cache/lookup` (first line a `CacheCall`: the drive's UUID and generation) →
  `{"answer": true|false}`: whether the copy is here, whole
- `POST /cache/list` (first line `{}`) → `{"answer": [[UUID, generation, size], ...]}`
- `POST /cache/remove` (a `CacheCall`) → `{"answer": true|false}`: whether there was one

A refusal is `{"error": message, "kind": X-Elastic-Error kind}` with the kind's status, as
the storage routes answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from openhosting.agent.image_cache import ImageCache
from openhosting.errors import ApiError, FailedError, UsageError
from openhosting.storage.storage_calls import CacheCall

CACHE_KEY = web.AppKey("image_cache", ImageCache)
MAX_CALL_LINE = 1 << 12


def add_cache_routes(app: web.Application, cache: ImageCache) -> None:
    app[CACHE_KEY] = cache
    app.router.add_post("/cache/lookup", _answering(_lookup))
    app.router.add_post("/cache/list", _answering(_list))
    app.router.add_post("/cache/remove", _answering(_remove))


Handler = Callable[[ImageCache, bytes], Awaitable[Any]]


def _answering(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            line = await request.content.readline()
            if len(line) > MAX_CALL_LINE:
                raise UsageError("cache call line too long")
            try:
                answer = await handler(request.app[CACHE_KEY], line)
            except OSError as error:  # the cache's directory unreadable: the operator's
                raise FailedError(f"image cache: {error.strerror or error}") from None
        except ApiError as error:
            return web.json_response(
                {"error": error.message, "kind": error.kind}, status=error.status
            )
        return web.json_response({"answer": answer})

    return handle


async def _lookup(cache: ImageCache, line: bytes) -> bool:
    call = CacheCall.decode(line)
    return await asyncio.to_thread(cache.has, call.drive, call.generation)


async def _list(cache: ImageCache, _line: bytes) -> list[list[Any]]:
    copies = await asyncio.to_thread(cache.copies)
    return [[copy.drive, copy.generation, copy.size] for copy in copies]


async def _remove(cache: ImageCache, line: bytes) -> bool:
    call = CacheCall.decode(line)
    return await asyncio.to_thread(cache.remove, call.drive, call.generation)
