"""Responses beyond key/value payloads: a slice of a file sent with sendfile."""

import asyncio
import os

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

FALLBACK_CHUNK = 1024 * 1024


class FileSliceResponse(web.StreamResponse):
    """`count` bytes of the open file `fd` from `offset`, sent by the kernel (sendfile).

    The caller keeps ownership of `fd` and closes it after `prepare` returns.
    """

    def __init__(self, fd: int, offset: int, count: int) -> None:
        super().__init__(headers={"Content-Type": "application/octet-stream"})
        self._fd, self._offset, self._count = fd, offset, count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp prepares again what a handler returns; send only once
            return await super().prepare(request)
        writer = await super().prepare(request)
        assert writer is not None
        if request.method != "HEAD" and self._count:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("Connection lost")
            # A file object over a duplicate of the fd: loop.sendfile wants one, and closing
            # it must not close the caller's descriptor.
            with os.fdopen(os.dup(self._fd), "rb") as file:
                try:
                    await asyncio.get_running_loop().sendfile(
                        transport, file, self._offset, self._count
                    )
                except NotImplementedError:
                    await self._copy(writer)
        await super().write_eof()
        return writer

    async def _copy(self, writer: AbstractStreamWriter) -> None:
        """Where the transport cannot sendfile (TLS), copy through user space."""
        position, end = self._offset, self._offset + self._count
        while position < end:
            chunk = await asyncio.to_thread(
                os.pread, self._fd, min(FALLBACK_CHUNK, end - position), position
            )
            if not chunk:
                break
            await writer.write(chunk)
            position += len(chunk)
