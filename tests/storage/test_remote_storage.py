"""RemoteDriveStorage's byte streams against an agent's end that the test paces: a thread
speaking the stream wire (storage/stream_wire.py) over the cluster's real mutual TLS (the
real agent is tests/agent/test_agent_storage.py). A write holds at most its few pieces
whatever the agent's speed, an agent's refusal mid-write ends the write at once, an abort
cuts the stream before its end; a read fills at most its few pieces ahead of a reader that
stopped, and an agent gone mid-read is a 503 naming the host."""

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.agent.pki import agent_context, control_context
from openhosting.errors import FullError, UnavailableError
from openhosting.storage import agent_streams, stream_wire
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.remote_storage import (
    SEND_PIECE,
    RemoteDriveStorage,
    RemoteRead,
    RemoteWrite,
)
from testbed.agent_process import Cluster, make_cluster

MIB = 1 << 20
DRIVE = "0b8f6f8e-55f0-4c4e-9d4a-3a7d2f1e9c10"


class PacedAgent:
    """One stream of host hv-a's agent, in a thread: a write's frames are read only while
    `flowing` is set (a refusal after `refuse_after` bytes); a read sends `count` bytes of
    `pattern`, or closes after `die_after` of them."""

    def __init__(self, cluster: Cluster) -> None:
        self._context = agent_context(cluster.host("hv-a"))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.flowing = threading.Event()
        self.refuse_after: int | None = None
        self.die_after: int | None = None
        self.received = self.sent = 0
        self.cut: bool | None = None  # a write's connection ended before its end frame
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        connection, _peer = self._listener.accept()
        connection.settimeout(10)
        preface = bytearray(len(stream_wire.STREAM_PREFACE))
        stream_wire.receive_exactly(connection, memoryview(preface))
        with self._context.wrap_socket(connection, server_side=True) as stream:
            call = json.loads(stream_wire.receive_message(stream))
            if call["action"] == "write":
                self._write(stream)
            else:
                self._read(stream, call["count"])

    def _write(self, stream: socket.socket) -> None:
        try:
            while self.flowing.wait(10) and (length := stream_wire.receive_frame_length(stream)):
                piece = bytearray(length)
                stream_wire.receive_exactly(stream, memoryview(piece))
                self.received += length
                if self.refuse_after is not None and self.received >= self.refuse_after:
                    stream_wire.send_refusal(stream, FullError("no room for the drive"))
                    with contextlib.suppress(OSError):
                        while stream.recv(1 << 16):
                            pass
                    return
            self.cut = False
            stream_wire.send_message(stream, {"answer": self.received})
        except (stream_wire.StreamClosed, OSError):
            self.cut = True

    def _read(self, stream: socket.socket, count: int) -> None:
        stream_wire.send_message(stream, {"answer": count})
        with contextlib.suppress(OSError):
            while self.sent < count:
                if self.die_after is not None and self.sent >= self.die_after:
                    return
                stream.sendall(pattern(self.sent, min(MIB, count - self.sent)))
                self.sent += min(MIB, count - self.sent)


BLOCK = bytes(index % 251 for index in range(MIB + 251))


def pattern(offset: int, length: int) -> bytes:
    """`length` bytes of the stream from `offset` (at most a MiB): byte i is i mod 251."""
    return BLOCK[offset % 251 : offset % 251 + length]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return make_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def agent(cluster: Cluster) -> Iterator[PacedAgent]:
    paced = PacedAgent(cluster)
    yield paced
    paced.flowing.set()
    paced.join()


@pytest.fixture
async def storage(agent: PacedAgent, cluster: Cluster) -> AsyncIterator[RemoteDriveStorage]:
    context = control_context(cluster.control)
    remote = RemoteDriveStorage(HostConnection("hv-a", agent.address, context))
    yield remote
    await remote.close()


async def until_still(value: Callable[[], int]) -> int:
    """`value` once it has not changed for 0.3 s (5 s at most)."""
    last, still_since, deadline = value(), time.monotonic(), time.monotonic() + 5
    while time.monotonic() < deadline and time.monotonic() - still_since < 0.3:
        await asyncio.sleep(0.05)
        if value() != last:
            last, still_since = value(), time.monotonic()
    return last


async def test_a_write_holds_at_most_its_pieces_while_the_agent_is_slow(
    agent: PacedAgent, storage: RemoteDriveStorage
) -> None:
    ends: list[int | None] = []
    writer = storage.open_write(DriveBytes(DRIVE, "disk"), 0, 1 << 30, False, ends.append)
    assert isinstance(writer, RemoteWrite)
    total = 96 * MIB
    feeding = asyncio.ensure_future(_feed(writer, total))
    taken = await until_still(lambda: total - writer.remaining)
    # The agent reads nothing: the API side waits (it would wait reading its own client),
    # holding its few pieces; the rest of what it took is in the sockets' buffers.
    assert not feeding.done()
    stream = writer._stream
    assert stream is not None and stream._pieces.qsize() <= agent_streams.WRITE_PIECES
    assert taken <= (agent_streams.WRITE_PIECES + 2) * SEND_PIECE + 16 * MIB
    agent.flowing.set()
    await feeding
    assert await writer.finish() == total == agent.received
    assert ends == [total] and agent.cut is False


async def test_an_agents_refusal_mid_write_ends_it_at_once(
    agent: PacedAgent, storage: RemoteDriveStorage
) -> None:
    ends: list[int | None] = []
    writer = storage.open_write(DriveBytes(DRIVE, "disk"), 0, 1 << 30, False, ends.append)
    assert isinstance(writer, RemoteWrite)
    agent.refuse_after = 4 * MIB
    agent.flowing.set()
    with pytest.raises(FullError, match=r"no room.*hv-a"):
        await asyncio.wait_for(_feed(writer, 512 * MIB), 30)
    await writer.abort()
    assert ends == [None] and storage.is_available(DRIVE, "disk")


async def test_an_abort_cuts_the_stream_before_its_end(
    agent: PacedAgent, storage: RemoteDriveStorage
) -> None:
    ends: list[int | None] = []
    writer = storage.open_write(DriveBytes(DRIVE, "disk"), 0, 1 << 30, True, ends.append)
    agent.flowing.set()
    await writer.write(bytes(SEND_PIECE))  # a whole piece: sent
    await until_still(lambda: agent.received)
    await writer.abort()
    agent.join()
    assert agent.received == SEND_PIECE and agent.cut is True and ends == [None]


async def test_a_read_fills_at_most_its_pieces_ahead_of_a_reader_that_stopped(
    agent: PacedAgent, storage: RemoteDriveStorage
) -> None:
    count, ends = 96 * MIB, []
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, count, lambda: ends.append(1))
    assert isinstance(read, RemoteRead)
    await read.begin()
    pieces = read.chunks()
    first = await anext(pieces)
    assert bytes(first) == pattern(0, len(first))
    sent = await until_still(lambda: agent.sent)
    stream = read._stream
    assert stream is not None and stream._items.qsize() <= agent_streams.READ_PIECES
    assert sent <= (agent_streams.READ_PIECES + 2) * agent_streams.READ_PIECE + 16 * MIB
    received = len(first)
    async for piece in pieces:  # the rest, exact
        assert bytes(piece[:4096]) == pattern(received, min(4096, len(piece)))
        received += len(piece)
    assert received == count == agent.sent
    read.close()
    assert ends == [1]


async def test_an_agent_gone_mid_read_is_a_503_naming_the_host(
    agent: PacedAgent, storage: RemoteDriveStorage
) -> None:
    agent.die_after = 8 * MIB
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, 64 * MIB, lambda: None)
    await read.begin()
    with pytest.raises(UnavailableError, match="hv-a"):
        async for _piece in read.chunks():
            pass
    read.close()
    assert not storage.is_available(DRIVE, "disk")


async def _feed(writer: RemoteWrite, total: int) -> None:
    for _ in range(total // MIB):
        await writer.write(bytes(MIB))


class Client:
    """The API's client end of a read sent on by the stream's thread: a TCP connection on
    loopback whose server end (`socket`, non-blocking as the event loop holds it) is sent
    to, and whose client end a thread reads while `reading` is set (closing after
    `close_after` bytes)."""

    def __init__(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self._far = socket.create_connection(listener.getsockname())
            self.socket, _peer = listener.accept()
        self.socket.setblocking(False)
        self.reading = threading.Event()
        self.close_after: int | None = None
        self.received = 0
        self.mismatch: int | None = None  # the offset of the first byte not the pattern's
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = bytearray(MIB)
        with self._far:
            while self.reading.wait(10):
                if self.close_after is not None and self.received >= self.close_after:
                    return
                got = self._far.recv_into(buffer)
                if not got:
                    return
                if self.mismatch is None and bytes(buffer[:got]) != pattern(self.received, got):
                    self.mismatch = self.received
                self.received += got

    def close(self) -> None:
        self.socket.close()  # the reader's end of the stream
        self.reading.set()
        self._thread.join(10)


@pytest.fixture
def client() -> Iterator[Client]:
    far = Client()
    yield far
    far.close()


def stream_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "drive-read-hv-a"]


async def test_a_read_sent_on_to_a_client_by_the_stream_thread_is_exact(
    agent: PacedAgent, storage: RemoteDriveStorage, client: Client
) -> None:
    count, ends = 24 * MIB + 4321, []
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, count, lambda: ends.append(1))
    assert isinstance(read, RemoteRead)
    client.reading.set()
    await asyncio.wait_for(read.send_to(client.socket), 30)
    read.close()
    await until_still(lambda: client.received)
    assert client.received == count == agent.sent and client.mismatch is None
    assert ends == [1]


async def test_a_client_that_stops_reading_stops_the_stream_thread_and_the_agent(
    agent: PacedAgent, storage: RemoteDriveStorage, client: Client
) -> None:
    count = 96 * MIB
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, count, lambda: None)
    sending = asyncio.ensure_future(read.send_to(client.socket))
    sent = await until_still(lambda: agent.sent)
    # The thread holds its one buffer while the client's socket is full; the agent's
    # socket fills in turn and the agent waits: no more than the sockets' buffers between.
    assert not sending.done()
    assert sent <= agent_streams.SEND_ON_PIECE + 24 * MIB
    client.reading.set()
    await asyncio.wait_for(sending, 30)
    read.close()
    await until_still(lambda: client.received)
    assert client.received == count == agent.sent and client.mismatch is None


async def test_a_client_gone_mid_read_ends_the_thread_and_the_agents_stream(
    agent: PacedAgent, storage: RemoteDriveStorage, client: Client
) -> None:
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, 512 * MIB, lambda: None)
    client.close_after = 4 * MIB
    client.reading.set()
    with pytest.raises(agent_streams.ClientGone):
        await asyncio.wait_for(read.send_to(client.socket), 30)
    read.close()
    agent.join()  # the agent's send failed: its stream ended
    assert agent.sent < 512 * MIB
    assert await until_still(lambda: len(stream_threads())) == 0
    # The client's going says nothing of the agent's host.
    assert storage.is_available(DRIVE, "disk")


async def test_an_agent_gone_mid_send_on_is_a_503_naming_the_host_and_a_cut_answer(
    agent: PacedAgent, storage: RemoteDriveStorage, client: Client
) -> None:
    agent.die_after = 8 * MIB
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, 64 * MIB, lambda: None)
    client.reading.set()
    with pytest.raises(UnavailableError, match="hv-a"):
        await asyncio.wait_for(read.send_to(client.socket), 30)
    read.close()
    assert await until_still(lambda: client.received) == 8 * MIB
    assert client.mismatch is None and not storage.is_available(DRIVE, "disk")


async def test_a_send_on_cancelled_returns_once_the_thread_let_go_of_the_client(
    agent: PacedAgent, storage: RemoteDriveStorage, client: Client
) -> None:
    read = storage.open_read(DriveBytes(DRIVE, "disk"), 0, 512 * MIB, lambda: None)
    sending = asyncio.ensure_future(read.send_to(client.socket))
    await until_still(lambda: agent.sent)  # the client reads nothing: the thread waits
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sending, 10)
    # The caller may close the client's socket now: the thread sends on it no more.
    stream = read._stream
    assert stream is not None and stream._client is None
    read.close()
    assert await until_still(lambda: len(stream_threads())) == 0
