"""The agent's port, and its end of the drive byte streams (storage/stream_wire.py).

`AgentListener` accepts the agent's connections itself: one that opens with the stream
preface is a drive byte stream, served by a thread of its own with a blocking TLS socket
(`DriveStreams`); any other goes to the agent's HTTP application with the same TLS context,
as a plain listening site would hand it. Both have the same mutual TLS, and a stream, like
every HTTP call (agent/server.py), is served to the control certificate only.

A stream's thread reads a plain drive's file itself (`os.preadv` into one buffer, sent whole:
OpenSSL encrypts it in C with the GIL released); an encrypted drive's decrypted pieces and a
write's pieces go through the drive storage on the event loop, as the HTTP routes use it.
A `cache_fill` stream writes a copy of a standard drive into this host's image cache
(agent/image_cache.py) from its thread: its bytes come as a write's do, and are answered the
same way once the copy is in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from openhosting.agent.image_cache import ImageCache
from openhosting.agent.pki import CONTROL, peer_role
from openhosting.errors import ApiError, FailedError, MissingError, UsageError
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.drive_transfers import ReadPlan
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.storage_calls import CacheCall, StorageCall
from openhosting.storage.stream_wire import (
    MAX_FRAME,
    STALL_TIMEOUT,
    STREAM_PREFACE,
    StreamClosed,
    TlsStream,
    receive_exactly,
    receive_frame_length,
    receive_message,
    send_message,
    send_refusal,
    time_left,
    widen_socket_buffers,
)

log = logging.getLogger("openhosting.agent")

T = TypeVar("T")

# Seconds a new connection has to send its first byte, and to finish its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
# A plain read's pieces: read from the file into one buffer, sent whole.
READ_PIECE = 4 << 20
# The action of a stream filling a copy in the image cache.
CACHE_FILL = "cache_fill"
# Streams served at once, the others' connections closed (each API node has at most
# `max_transfers`, 64 by default, under way).
MAX_STREAMS = 256
# Connections of one address not through their handshake yet, the others closed: a stranger
# filling the threads from one address leaves the rest to the others (an API node may begin
# its `max_transfers` streams at once).
MAX_PENDING_PER_ADDRESS = 64


class AgentListener:
    """Accepts the agent's connections on `host`:`port`: drive byte streams to `streams`
    (none: refused), the others to `http`, an asyncio protocol factory (aiohttp's server)."""

    def __init__(
        self,
        http: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        streams: DriveStreams | None,
    ) -> None:
        self._http, self._context, self._streams = http, context, streams
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; the address bound (HOST, PORT)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=128)
        self._socket.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._socket))
        bound = self._socket.getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop accepting (the connections under way go on until they end or are closed)."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._socket is not None:
            self._socket.close()
        for task in list(self._tasks):
            task.cancel()
        if self._streams is not None:
            self._streams.close()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _peer = await loop.sock_accept(listening)
            except OSError as error:  # out of descriptors, say: the next may do
                log.warning("event=agent_accept_failed error=%s", error)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._dispatch(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await _readable(loop, connection)
            first = connection.recv(1, socket.MSG_PEEK)
            if first == STREAM_PREFACE[:1] and self._streams is not None:
                self._streams.serve(connection)
                return
            await loop.connect_accepted_socket(
                self._http, connection, ssl=self._context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError) as error:  # a client gone, silent, or not ours
            log.debug("event=agent_connection_dropped error=%s", error)
            connection.close()


def _readable(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> asyncio.Future[None]:
    readable: asyncio.Future[None] = loop.create_future()
    fd = connection.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    readable.add_done_callback(lambda _future: loop.remove_reader(fd))
    return readable


class DriveStreams:
    """The drive byte streams of `storage`, each on a thread of its own, over the agent's
    TLS `context`; the fills of `cache`, this host's image cache (none: refused)."""

    def __init__(
        self, storage: LocalDriveStorage, context: ssl.SSLContext, cache: ImageCache | None = None
    ) -> None:
        self._storage, self._context = storage, context
        self._cache = cache
        self._loop = asyncio.get_running_loop()
        self._open: set[socket.socket] = set()
        # Address → its connections not through their handshake yet.
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    def serve(self, connection: socket.socket) -> None:
        """Serve `connection` in a thread of its own, unless `MAX_STREAMS` are under way or
        its address has `MAX_PENDING_PER_ADDRESS` not through their handshake (a thread is
        taken before the handshake: who may not connect must not take them all)."""
        try:
            address = str(connection.getpeername()[0])
        except OSError:  # gone already
            connection.close()
            return
        with self._lock:
            pending = self._pending.get(address, 0)
            if len(self._open) >= MAX_STREAMS or pending >= MAX_PENDING_PER_ADDRESS:
                log.warning(
                    "event=agent_stream_refused reason=too_many streams=%d address=%s pending=%d",
                    len(self._open), address, pending,
                )  # fmt: skip
                connection.close()
                return
            self._open.add(connection)
            self._pending[address] = pending + 1
        threading.Thread(
            target=self._run, args=(connection, address), name="drive-stream", daemon=True
        ).start()

    def _proved(self, address: str) -> None:
        """One connection of `address` no longer waits for its handshake."""
        with self._lock:
            left = self._pending.pop(address, 1) - 1
            if left > 0:
                self._pending[address] = left

    def close(self) -> None:
        """End the streams under way (their connections shut: each thread ends)."""
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _run(self, connection: socket.socket, address: str) -> None:
        proved = False
        try:
            connection.setblocking(True)
            widen_socket_buffers(connection)
            # The preface and the handshake within HANDSHAKE_TIMEOUT as a whole, not per
            # byte: a byte every few seconds held the thread for as long as they came.
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            preface = bytearray(len(STREAM_PREFACE))
            _receive_by(connection, memoryview(preface), deadline)
            if preface != STREAM_PREFACE:
                return
            stream = TlsStream(connection, self._context, server_side=True, deadline=deadline)
            self._proved(address)
            proved = True
            connection.settimeout(STALL_TIMEOUT)
            self._serve(stream)
        except (OSError, ValueError) as error:  # the control plane gone, or a broken stream
            log.info("event=agent_stream_ended error=%s", error)
        finally:
            if not proved:
                self._proved(address)
            with self._lock:
                self._open.discard(connection)
            connection.close()

    def _serve(self, stream: TlsStream) -> None:
        role, name = peer_role(stream.getpeercert())
        try:
            if role != CONTROL:
                log.warning("event=agent_refused role=%s name=%s path=stream", role, name)
                raise FailedError(
                    f"only the control plane may call a host agent, not {role} {name}"
                )
            message = receive_message(stream)
            if _action_of(message) == CACHE_FILL:
                self._fill_cache(stream, CacheCall.decode(message))
                return
            call = StorageCall.decode(message)  # checked: an object naming a drive
            action = json.loads(message).get("action")
            if not self._storage.is_available(call.drive, call.tier):
                raise MissingError(f"Drive {call.drive} has no file on this host")
            drive_bytes = DriveBytes(call.drive, call.tier, call.master_key)
            if action == "read":
                self._read(stream, drive_bytes, call)
            elif action == "write":
                self._write(stream, drive_bytes, call)
            else:
                raise UsageError(f"no stream action {action!r}")
        except ApiError as error:
            send_refusal(stream, error)
            _drain(stream)

    def _read(self, stream: TlsStream, drive_bytes: DriveBytes, call: StorageCall) -> None:
        plan = self._storage.open_read(drive_bytes, call.offset, call.count, _nothing)
        try:
            send_message(stream, {"answer": call.count})
            if plan.plain_file is not None:
                _send_file(stream, plan.plain_file.fileno(), call.offset, call.count)
            else:
                self._send_decrypted(stream, plan)
        finally:
            plan.close()

    def _send_decrypted(self, stream: TlsStream, plan: ReadPlan) -> None:
        pieces = plan.chunks()
        try:
            while (piece := self._on_loop(_next(pieces))) is not None:
                stream.sendall(piece)
        finally:
            self._on_loop(_close(pieces))

    def _write(self, stream: TlsStream, drive_bytes: DriveBytes, call: StorageCall) -> None:
        writer = self._storage.open_write(
            drive_bytes, call.offset, call.size, call.staged, lambda _written: None
        )
        try:
            for view in _frames(stream):
                self._on_loop(writer.write(view))  # type: ignore[arg-type]  # copied there
            written = self._on_loop(writer.finish())
        except BaseException:
            # Cut short (no end frame), refused or failed: nothing applied of a staged write.
            self._on_loop(writer.abort())
            raise
        send_message(stream, {"answer": written})

    def _fill_cache(self, stream: TlsStream, call: CacheCall) -> None:
        if self._cache is None:
            raise UsageError("this agent keeps no image cache")
        written = self._cache.fill(call.drive, call.generation, call.size, _frames(stream))
        log.info(
            "event=agent_standard_cached drive=%s generation=%s size=%s",
            call.drive, call.generation, written,
        )  # fmt: skip
        send_message(stream, {"answer": written})

    def _on_loop(self, step: Coroutine[Any, Any, T]) -> T:
        """Run `step` on the event loop (where the storage's pieces are handled), waiting."""
        return asyncio.run_coroutine_threadsafe(step, self._loop).result(STALL_TIMEOUT)


def _receive_by(connection: socket.socket, view: memoryview, deadline: float) -> None:
    """Fill `view` from `connection` by `deadline` (TimeoutError after it)."""
    while view:
        connection.settimeout(time_left(deadline))
        got = connection.recv_into(view)
        if not got:
            raise StreamClosed("connection closed")
        view = view[got:]


def _action_of(message: bytes) -> object:
    """The `action` of a stream's call, if its line is a JSON object (else None: the call's
    own decoding says what is wrong with it)."""
    try:
        fields = json.loads(message)
    except ValueError:
        return None
    return fields.get("action") if isinstance(fields, dict) else None


def _frames(stream: TlsStream) -> Iterator[memoryview]:
    """A write's frames as they come, until its empty end frame; each view is valid until
    the next is asked for."""
    frame = bytearray()  # as long as the longest frame yet
    while length := receive_frame_length(stream):
        if length > MAX_FRAME:
            raise UsageError(f"a frame of {length} bytes")
        if length > len(frame):
            frame = bytearray(length)
        view = memoryview(frame)[:length]
        receive_exactly(stream, view)
        yield view


def _send_file(stream: TlsStream, fd: int, offset: int, count: int) -> None:
    buffer = bytearray(min(READ_PIECE, count))
    end = offset + count
    while offset < end:
        view = memoryview(buffer)[: min(len(buffer), end - offset)]
        got = os.preadv(fd, [view], offset)
        if not got:
            raise StreamClosed(f"the drive's file ends {end - offset} bytes short")
        stream.sendall(view[:got])
        offset += got


async def _next(pieces: AsyncIterator[bytes | bytearray]) -> bytes | bytearray | None:
    return await anext(pieces, None)


async def _close(pieces: AsyncIterator[bytes | bytearray]) -> None:
    """The read's pieces given up: its worker threads waited for (`ReadPlan.chunks`)."""
    if isinstance(pieces, AsyncGenerator):
        await pieces.aclose()


def _drain(stream: TlsStream) -> None:
    """Read and drop what the control plane still sends, until it closes: a socket closed
    with bytes unread would reset the connection, and the refusal sent with it."""
    scratch = memoryview(bytearray(1 << 16))
    deadline = time.monotonic() + STALL_TIMEOUT
    with contextlib.suppress(OSError, ValueError):
        while stream.recv_into(scratch) and time.monotonic() < deadline:
            pass


def _nothing() -> None:
    """A read's end: the agent counts nothing (the control plane keeps the counters)."""
