"""A response's socket taken over from its transport, for a thread to send the body itself.

asyncio's `loop.sendfile` takes a transport over the same way for the kernel: what the
transport holds (the response's headers) is sent first, its reading is paused, the socket is
used directly, and the transport gets it back as it was. Here the socket is a duplicate of
the transport's descriptor, so a thread may send on it with blocking calls (a timeout keeps
the descriptor non-blocking, as the event loop needs it) while the event loop waits.
"""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from openhosting.api.responses import SEND_BUFFER, corked, widen_send_buffer


@contextlib.asynccontextmanager
async def taken_over(
    request: web.BaseRequest, writer: AbstractStreamWriter, count: int
) -> AsyncIterator[socket.socket]:
    """The client's socket for sending `count` bytes of body, once the transport has sent
    what it holds. Nothing else may write to the response meanwhile. A body cut short (the
    block raised) closes the connection: its answer cannot be finished."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Connection lost")
    await _flushed(transport, writer)
    reading = transport.is_reading()
    transport.pause_reading()
    transport_socket = transport.get_extra_info("socket")
    client = socket.socket(fileno=os.dup(transport_socket.fileno()))
    try:
        if count > SEND_BUFFER:
            widen_send_buffer(client)
        with corked(client):
            yield client
    except BaseException:
        transport.abort()
        raise
    finally:
        client.close()  # the duplicate: the transport's own descriptor stays open
        if reading:
            transport.resume_reading()


async def _flushed(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until the transport has sent all it holds: with a high-water mark of 0, a byte
    held pauses its protocol, and the writer's drain waits until the transport resumes it,
    which it does once its buffer is empty."""
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)
