"""RemoteDriveStorage's streaming, with the agent's side replaced by a reader of the request
body that the test paces (the real agent is tests/agent/test_agent_storage.py): a write holds
at most its queue of pieces (and the one it gathers) whatever the agent's speed, an agent's
refusal mid-write ends the write at once, and an abort cuts the body."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.errors import FullError
from openhosting.storage import remote_storage
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.remote_storage import SEND_PIECE, WRITE_QUEUE, RemoteDriveStorage

PIECE = b"x" * 65536


class Answer:
    def __init__(self, value: object) -> None:
        self.value = value

    async def json(self) -> dict[str, object]:
        return {"answer": self.value}

    def release(self) -> None:
        pass


class PacedAgent:
    """Reads a write's body only while `flowing` is set; `refuse` ends it with a refusal."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.refuse = False
        self.received = 0
        self.cut = False

    async def post(self, action: str, body: Any, timeout: aiohttp.ClientTimeout) -> Answer:
        assert action == "write"
        pieces: AsyncIterator[bytes] = body
        try:
            await anext(pieces)  # the call's line
            async for piece in pieces:
                await self.flowing.wait()
                if self.refuse:
                    raise FullError("no room (host hv-a)")
                self.received += len(piece)
        except asyncio.CancelledError:
            self.cut = True
            raise
        return Answer(self.received)


def storage_with(agent: PacedAgent, monkeypatch: pytest.MonkeyPatch) -> RemoteDriveStorage:
    storage = RemoteDriveStorage(
        HostConnection("hv-a", "127.0.0.1:1", ssl.create_default_context())
    )
    monkeypatch.setattr(storage, "post", agent.post)
    return storage


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_write_holds_at_most_its_queue_of_pieces_while_the_agent_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, ends = PacedAgent(), []
    writer = storage_with(agent, monkeypatch).open_write(
        DriveBytes("d", "disk"), 0, 1 << 30, False, ends.append
    )
    feeding = asyncio.ensure_future(_feed(writer, 100))
    await settle()
    # The agent reads nothing: the API side holds its queue, the piece being handed over and
    # the one it gathers, and waits (it would wait reading its own client).
    assert not feeding.done()
    assert writer._queue.qsize() == WRITE_QUEUE
    agent.flowing.set()
    await feeding
    assert await writer.finish() == 100 * len(PIECE) == agent.received
    assert ends == [100 * len(PIECE)]


async def test_an_agents_refusal_mid_write_ends_it_and_an_abort_cuts_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, ends = PacedAgent(), []
    storage = storage_with(agent, monkeypatch)
    writer = storage.open_write(DriveBytes("d", "disk"), 0, 1 << 30, False, ends.append)
    feeding = asyncio.ensure_future(_feed(writer, 100))
    await settle()
    agent.refuse = True
    agent.flowing.set()
    with pytest.raises(FullError, match="hv-a"):
        await feeding  # the queue full, yet the refusal ends the wait
    await writer.abort()
    assert ends == [None]

    other = PacedAgent()
    writer = storage_with(other, monkeypatch).open_write(
        DriveBytes("d", "disk"), 0, 1 << 30, True, ends.append
    )
    await writer.write(bytes(SEND_PIECE))  # a whole piece: sent
    await settle()
    await writer.abort()
    assert other.cut and ends == [None, None]


async def _feed(writer: remote_storage.RemoteWrite, count: int) -> None:
    for _ in range(count):
        await writer.write(PIECE)
