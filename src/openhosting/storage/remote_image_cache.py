"""The image cache of another host, as its agent serves it (agent/cache_routes.py,
agent/image_cache.py): whether a copy of a standard drive is there, the copies there, a copy
removed, and a copy filled from a stream of its bytes (the write stream's wire, action
`cache_fill`: storage/agent_streams.py).

Failures are those of `RemoteDriveStorage`: the agent unreachable a 503 naming the host, its
refusals the same API errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiohttp

from openhosting.reverter import Reverter
from openhosting.storage.remote_storage import SEND_PIECE, RemoteDriveStorage, answer_of
from openhosting.storage.storage_calls import CachedCopy, encode_call

CACHE_FILL = "cache_fill"
T = TypeVar("T")


class RemoteImageCache:
    """The image cache of the host whose drives `storage` holds."""

    def __init__(self, storage: RemoteDriveStorage) -> None:
        self._storage = storage
        self.host = storage.host

    async def _call(self, action: str, **fields: object) -> object:
        timeout = aiohttp.ClientTimeout(total=self._storage.agent.call_timeout)
        response = await self._storage.post(action, encode_call(**fields), timeout, "cache")
        try:
            async with asyncio.timeout(self._storage.agent.call_timeout):
                return answer_of(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise self._storage.unreachable(error) from None
        finally:
            response.release()

    async def close(self) -> None:
        await self._storage.close()

    async def lookup(self, drive: str, generation: str) -> bool:
        """Whether the host holds a whole copy of `drive` at `generation`."""
        return bool(await self._call("lookup", drive=drive, generation=generation))

    async def copies(self) -> list[CachedCopy]:
        answer = await self._call("list")
        try:
            return [
                CachedCopy(str(drive), str(generation), int(size))
                for drive, generation, size in answer  # type: ignore[attr-defined]
            ]
        except (TypeError, ValueError) as error:
            raise self._storage.unreachable(f"a listing not understood: {error}") from None

    async def remove(self, drive: str, generation: str) -> bool:
        return bool(await self._call("remove", drive=drive, generation=generation))

    async def fill(
        self,
        drive: str,
        generation: str,
        size: int,
        pieces: AsyncIterator[bytes | bytearray],
    ) -> int:
        """Send `size` bytes, `pieces`, as the copy of `drive` at `generation`; the agent's
        count once the copy is in place. Given up (an error here, the caller cancelled), the
        stream is cut before its end frame and the agent keeps nothing of it."""
        call = {"drive": drive, "generation": generation, "size": size}
        stream = self._storage.write_stream(call, CACHE_FILL)
        stream.start(f"cache-fill-{self.host}")

        async def give_up() -> None:
            stream.give_up()
            with contextlib.suppress(Exception):  # given up: its outcome is no news
                await stream.outcome

        async with Reverter() as revert:
            revert.add(give_up)
            gathered = bytearray()
            async for piece in pieces:  # the source's errors raised as they are
                gathered += piece
                if len(gathered) >= SEND_PIECE:
                    await self._failing(stream.put(gathered))
                    gathered = bytearray()
            if gathered:
                await self._failing(stream.put(gathered))
            written = await self._failing(stream.end())
            revert.success()
        return written

    async def _failing(self, step: Awaitable[T]) -> T:
        """The stream's failure as the API's: the agent's refusal as it was, anything else
        (the network's) a 503 naming the host."""
        try:
            return await step
        except Exception as error:  # the stream's thread's, raised here
            raise self._storage.failure(error) from None
