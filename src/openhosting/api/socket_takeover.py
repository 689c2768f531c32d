"""A response's socket taken over from its transport, for a thread to send the body itself.

asyncio's `loop.sendfile` takes a transport over the same way for the kernel: what the
transport holds (the response's headers) is sent first, its reading is paused, the socket is
used directly, and the transport gets it back as it was. Here the socket is a duplicate of
the transport's descriptor, so a thread may send on it with blocking calls (a timeout keeps
the descriptor non-blocking, as the event loop needs it) while the event loop waits.

Both of the API's bodies made in the daemon's threads go this way: a remote drive's read,
sent by its stream's thread as it comes from the agent, and a local encrypted read, whose
worker thread sends each decrypted piece (`send_some`) and hands what a slow client does not
take in time back to the transport (`hand_back`).
"""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from openhosting.api.responses import SEND_BUFFER, corked, widen_send_buffer, write_in_slices

# How long a worker thread sending a body waits for the socket to take more before it hands
# the rest back to the event loop: a client reading slowly, or not at all, holds no thread.
SEND_PATIENCE = 0.05


@contextlib.asynccontextmanager
async def taken_over(
    request: web.BaseRequest, writer: AbstractStreamWriter, count: int
) -> AsyncIterator[socket.socket]:
    """The client's socket for sending `count` bytes of body, once the transport has sent
    what it holds. Meanwhile the transport's high-water mark is 0: the response may still be
    written through between two uses of the socket (`hand_back`), as `drain` then waits
    until the transport holds none of it. A body cut short (the block raised) closes the
    connection: its answer cannot be finished."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Connection lost")
    low, high = transport.get_write_buffer_limits()
    # With a high-water mark of 0, a byte held pauses the protocol, and the writer's drain
    # waits until the transport resumes it, which it does once its buffer is empty.
    transport.set_write_buffer_limits(high=0)
    reading = transport.is_reading()
    transport.pause_reading()
    client: socket.socket | None = None
    try:
        await writer.drain()
        transport_socket = transport.get_extra_info("socket")
        client = socket.socket(fileno=os.dup(transport_socket.fileno()))
        if count > SEND_BUFFER:
            widen_send_buffer(client)
        with corked(client):
            yield client
    except BaseException:
        transport.abort()
        raise
    finally:
        if client is not None:
            client.close()  # the duplicate: the transport's own descriptor stays open
        transport.set_write_buffer_limits(high=high, low=low)
        if reading:
            transport.resume_reading()


async def hand_back(
    response: web.StreamResponse, writer: AbstractStreamWriter, data: memoryview
) -> None:
    """Send `data` through the response's transport (what the taken-over socket did not
    take in time) and wait until the transport holds none of it: the socket may be used
    again after, and `data`'s memory too."""
    await write_in_slices(response, data)
    await writer.drain()


def send_some(sock: socket.socket, data: memoryview, patience: float = SEND_PATIENCE) -> int:
    """Send `data` on `sock` from a worker thread (the GIL released while the kernel
    copies, no turn of the event loop per slice) until all of it is sent or the socket has
    taken nothing for `patience` seconds; returns the bytes sent. `sock` is a duplicate of
    a non-blocking socket the event loop owns, which stays non-blocking: the timeout is
    kept by polling. A ConnectionError when the client is gone."""
    sock.settimeout(patience)
    sent = 0
    with contextlib.suppress(TimeoutError):
        while sent < len(data):
            sent += sock.send(data[sent:])
    return sent


async def sent_from_thread(sock: socket.socket, data: memoryview) -> int:
    """`send_some` in a worker thread, waited for to its end even when the request is
    cancelled (its client gone): the socket it uses is closed only after it."""
    work = asyncio.ensure_future(asyncio.to_thread(send_some, sock, data))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # the request is gone: nobody reads the outcome
            await work
        raise
