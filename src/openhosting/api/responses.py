"""Responses beyond key/value payloads: a slice of a file sent with sendfile, and a range
that was never written sent as a few bytes of gzip."""

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from isal import igzip

FALLBACK_CHUNK = 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024
# Pieces of a body made in memory handed to the transport at a time: about what one send
# into a SEND_BUFFER socket takes whole.
SEND_SLICE = 512 * 1024
SENDFILE_PIECE = 8 * 1024 * 1024  # a few milliseconds of the event loop at most
# A never-written range up to this size goes as gzip of zeros (about 1/1000 of its size) to
# a client that accepts gzip; the download tool's chunks are 5 MiB.
MAX_ZEROS_AS_GZIP = 64 * 1024 * 1024


@contextlib.contextmanager
def corked(sock: socket.socket | None) -> Iterator[None]:
    """TCP_CORK while a file streams out: only full segments leave (nginx's `tcp_nopush`),
    about a quarter more throughput on loopback; uncorking sends the last partial one."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        yield
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def widen_send_buffer(sock: socket.socket | None) -> None:
    """A larger send buffer for a large body: each send (or sendfile) moves more before the
    loop must wait for the socket again, so fewer wake-ups per gigabyte."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


async def write_in_slices(
    response: web.StreamResponse, data: bytes | bytearray | memoryview
) -> None:
    """Write `data` through `response` in slices: what the socket does not take at once is
    copied into the transport's buffer, so a whole 4 MiB chunk would mostly be copied
    twice."""
    view = memoryview(data)
    for start in range(0, len(view), SEND_SLICE):
        await response.write(view[start : start + SEND_SLICE])


def accepts_gzip(request: web.BaseRequest) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


@functools.lru_cache(maxsize=8)
def _gzip_of_zeros(count: int) -> bytes:
    return igzip.compress(bytes(count), compresslevel=1)


def zeros_as_gzip(count: int) -> web.Response:
    """`count` zero bytes, as a gzip-encoded body (the same few lengths recur: cached)."""
    return web.Response(
        body=_gzip_of_zeros(count),
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )


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
            sock = transport.get_extra_info("socket")
            if self._count > SEND_BUFFER:
                widen_send_buffer(sock)
            # A file object over a duplicate of the fd: loop.sendfile wants one, and closing
            # it must not close the caller's descriptor.
            with os.fdopen(os.dup(self._fd), "rb") as file, corked(sock):
                try:
                    await self._sendfile(transport, file)
                except NotImplementedError:
                    await self._copy(writer)
        await super().write_eof()
        return writer

    async def _sendfile(self, transport: asyncio.Transport, file: BinaryIO) -> None:
        """Send the slice a piece at a time: on loopback the reader drains as fast as the
        kernel copies, so one call for a gigabyte would hold the event loop for a second."""
        loop = asyncio.get_running_loop()
        position, end = self._offset, self._offset + self._count
        while position < end:
            if transport.is_closing():
                # The client went away between pieces; loop.sendfile would say RuntimeError.
                raise ConnectionResetError("Connection lost")
            piece = min(SENDFILE_PIECE, end - position)
            await loop.sendfile(transport, file, position, piece)
            position += piece

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
