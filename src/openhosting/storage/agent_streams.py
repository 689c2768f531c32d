"""The control plane's end of a drive byte stream (storage/stream_wire.py): one read or one
write on a connection of its own to a host's agent, driven by a thread of its own with a
blocking TLS socket, which hands whole pieces to and from the event loop.

A read's bytes go on one of two ways: handed to the event loop a piece at a time
(`ReadStream.pieces`), or sent by the thread itself to the socket of the client they are for
(`ReadStream.send_to`: each piece decrypted into one buffer and sent from it, with no turn
of the event loop and no piece made per MiB; the API's plain HTTP answer to a remote read).

Memory stays flat whatever the size: a read's thread fills at most `READ_PIECES` pieces of
`READ_PIECE` bytes ahead of the reader, or holds its one buffer while a client's socket takes
no more (a client that stops reading stops the thread, and so the agent's socket); a write's
thread is handed at most `WRITE_PIECES` pieces ahead of the socket. A failure in the thread
comes back to the event loop as the error it was; the caller turns the network's into its 503
(`RemoteDriveStorage.unreachable`), the client's socket's into `ClientGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from openhosting.agent.host_connection import HostConnection
from openhosting.storage.storage_calls import encode_call
from openhosting.storage.stream_wire import (
    MAX_FRAME,
    TlsStream,
    receive_answer,
    receive_exactly,
    received_early,
    send_frame,
)

READ_PIECE = 1 << 20
READ_PIECES = 2
WRITE_PIECES = 2
# What a read sent on to a client's socket is received into and sent from at a time.
SEND_ON_PIECE = 1 << 20


class ClientGone(ConnectionResetError):
    """The client a read's bytes were sent on to went away (or stalled): not the agent's
    doing."""


class _End:
    """The end of a write's pieces (`None` would do, were it not a piece's type's)."""


class _Cut:
    """A write given up: the connection closes before its end frame."""


Item = bytearray | BaseException | None


class _StreamThread:
    """A stream's connection and thread: started by `start`, ended by `cut` from the loop."""

    def __init__(self, agent: HostConnection, call: dict[str, Any], stall_timeout: float) -> None:
        self._agent, self._call, self._stall_timeout = agent, call, stall_timeout
        self._loop = asyncio.get_running_loop()
        self._socket: TlsStream | None = None
        self._cut = False
        self._lock = threading.Lock()  # the socket's hand-over between the thread and `cut`

    def start(self, name: str) -> None:
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        raise NotImplementedError

    def _connect(self) -> TlsStream:
        stream = self._agent.open_stream(self._stall_timeout)
        with self._lock:
            if self._cut:
                stream.close()
                raise ConnectionAbortedError("stream given up")
            self._socket = stream
        send_frame(stream, encode_call(**self._call))  # keys as base64, as in a call line
        return stream

    def _disconnect(self) -> None:
        with self._lock:  # not shut by `cut` once closed: its number may serve another
            stream, self._socket = self._socket, None
        if stream is not None:
            stream.close()

    def cut(self) -> None:
        """Give up: the connection is shut at once (a blocked send or receive in the thread
        ends with an error), the thread ends."""
        with self._lock:
            self._cut = True
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown: the TLS state stays the thread's.
                    self._socket.socket.shutdown(socket.SHUT_RDWR)

    def _hand(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)


class ReadStream(_StreamThread):
    """`count` bytes read from the agent, whole pieces at a time to the event loop
    (`pieces`) or sent on to a client's socket by the thread (`send_to`)."""

    def __init__(
        self, agent: HostConnection, call: dict[str, Any], count: int, stall_timeout: float
    ) -> None:
        super().__init__(agent, {**call, "action": "read"}, stall_timeout)
        self._count = count
        self._items: asyncio.Queue[Item] = asyncio.Queue()
        self._room = threading.Semaphore(READ_PIECES)  # the pieces it may fill ahead
        self._answered: asyncio.Future[None] = self._loop.create_future()
        # Where the bytes go once answered: the event loop's pieces (None) or a socket.
        self._sink: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._client: socket.socket | None = None  # the socket sent to, while it is
        self._sent_on: asyncio.Future[None] = self._loop.create_future()

    async def begin(self) -> None:
        """Connect and ask; the agent's refusal (or none at all) is raised from here."""
        self.start(f"drive-read-{self._agent.host}")
        await self._answered

    async def pieces(self) -> AsyncIterator[bytearray]:
        self._sink.put(None)
        while True:
            item = await self._items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._room.release()
            yield item

    async def send_to(self, client: socket.socket) -> None:
        """Send the bytes to `client` (a connected socket the caller owns and no one else
        sends on meanwhile) from the thread, as they come; done once all are sent.
        `ClientGone` if `client` fails or takes nothing for the stall timeout. Cancelled, it
        returns once the thread is done with `client` (its sockets shut: at once), so the
        caller may close it."""
        self._sink.put(client)
        try:
            await asyncio.shield(self._sent_on)
        except asyncio.CancelledError:
            self.cut()
            with contextlib.suppress(Exception):  # cut: its failure is no news
                await self._sent_on
            raise

    def close(self) -> None:
        self.cut()
        self._room.release()  # a thread waiting for room goes on to find its socket shut
        self._sink.put(None)  # and one waiting to be told where the bytes go

    def cut(self) -> None:
        with self._lock:
            if self._client is not None:  # a cut mid-send: the client's answer is cut too
                with contextlib.suppress(OSError):
                    self._client.shutdown(socket.SHUT_RDWR)
        super().cut()

    def _run(self) -> None:
        client: socket.socket | None = None
        try:
            stream = self._connect()
            count = int(receive_answer(stream, self._agent.host))
            if count != self._count:
                raise ValueError(f"{count} bytes offered for {self._count}")
            self._hand(_settle, self._answered, None)
            client = self._sink.get()
            if self._cut:
                raise ConnectionAbortedError("read given up")
            if client is None:
                self._fill(stream, count)
            else:
                self._send_on(stream, client, count)
                self._hand(_settle, self._sent_on, None)
        except Exception as error:  # passed on to the reader, which raises it
            self._hand(_settle, self._answered, error)
            if client is None:
                self._hand(self._items.put_nowait, error)
            else:
                self._hand(_settle, self._sent_on, error)
        finally:
            self._disconnect()

    def _fill(self, stream: TlsStream, left: int) -> None:
        while left:
            self._room.acquire()
            if self._cut:
                return
            piece = bytearray(min(READ_PIECE, left))
            receive_exactly(stream, memoryview(piece))
            left -= len(piece)
            self._hand(self._items.put_nowait, piece)
        self._hand(self._items.put_nowait, None)

    def _send_on(self, stream: TlsStream, client: socket.socket, left: int) -> None:
        # A blocking send with a deadline, on a socket the event loop may hold in
        # non-blocking mode: a timeout keeps it so (Python polls before each send).
        client.settimeout(self._stall_timeout)
        with self._lock:
            if self._cut:
                raise ConnectionAbortedError("read given up")
            self._client = client
        try:
            buffer = memoryview(bytearray(min(SEND_ON_PIECE, left)))
            while left:
                view = buffer[: min(len(buffer), left)]
                receive_exactly(stream, view)
                try:
                    client.sendall(view)
                except OSError as error:
                    raise ClientGone(f"the client went away: {error}") from None
                left -= len(view)
        finally:
            with self._lock:
                self._client = None


class WriteStream(_StreamThread):
    """A write's bytes sent to the agent as they are handed over; `outcome` is the agent's
    count of bytes written once durable, or its refusal, whichever comes first. `action`:
    what the agent does with the bytes (`cache_fill`: a copy in its image cache)."""

    def __init__(
        self,
        agent: HostConnection,
        call: dict[str, Any],
        stall_timeout: float,
        action: str = "write",
    ) -> None:
        super().__init__(agent, {**call, "action": action}, stall_timeout)
        self._pieces: queue.SimpleQueue[bytearray | type[_End] | type[_Cut]] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(WRITE_PIECES)
        self.outcome: asyncio.Future[int] = self._loop.create_future()

    async def put(self, piece: bytearray) -> None:
        """Hand `piece` over once there is room for it; an answer meanwhile (a refusal) is
        raised from here."""
        room = asyncio.ensure_future(self._room.acquire())
        either: list[asyncio.Future[Any]] = [room, self.outcome]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not room.done():
            room.cancel()
            await self.outcome
            raise ConnectionError("the agent answered before the write's end")
        self._pieces.put(piece)

    async def end(self) -> int:
        """The write's end sent; the agent's count once its bytes are durable."""
        self._pieces.put(_End)
        return await self.outcome

    def give_up(self) -> None:
        self._pieces.put(_Cut)
        self.cut()

    def _run(self) -> None:
        try:
            self._hand(_settle, self.outcome, self._send(self._connect()))
        except Exception as error:  # passed on to the writer, which raises it
            self._hand(_settle, self.outcome, error)
        finally:
            self._disconnect()

    def _send(self, stream: TlsStream) -> int:
        while True:
            piece = self._pieces.get()
            if piece is _Cut:
                raise ConnectionAbortedError("write given up")
            if begun := received_early(stream):  # a refusal: the agent reads no more
                return int(receive_answer(stream, self._agent.host, begun))
            if piece is _End:
                send_frame(stream, b"")
                return int(receive_answer(stream, self._agent.host))
            assert isinstance(piece, bytearray)
            for start in range(0, len(piece), MAX_FRAME):
                send_frame(stream, memoryview(piece)[start : start + MAX_FRAME])
            self._hand(self._room.release)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
