"""`DriveStorage` of another host: each call made to that host's agent over mutual TLS
(agent/storage_routes.py serves it), the bytes of reads and writes streamed both ways on a
connection of their own (storage/agent_streams.py, agent/drive_streams.py); the bytes of a
read answered to the API's client are sent on to its socket by the stream's thread itself
(`RemoteRead.send_to`).

Memory stays flat whatever the size: a write's bytes are gathered into pieces of
`SEND_PIECE` handed to the stream's thread, at most a few ahead of its socket (a slow agent
makes `write` wait, and so the API request's reading of its client); a read's pieces are
filled at most a few ahead of its reader (a client that stops reading stops the agent's
socket).

Deadlines: a plain call has the connection's call timeout; a stream may last as long as its
bytes take, but no `STALL_TIMEOUT` without a byte moving. An agent that cannot be reached or
does not answer is a 503 `failed` (`UnavailableError`) naming the host; the agent's own
refusals come back as the same API error (507 full, 400 usage...). `is_available` cannot wait
for the network: it says whether the last call to the agent got an answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from openhosting.agent.host_connection import HostConnection
from openhosting.errors import ERROR_TYPES, ApiError, FailedError, FullError, UnavailableError
from openhosting.reverter import Reverter
from openhosting.storage.agent_streams import ClientGone, ReadStream, WriteStream
from openhosting.storage.drive_files import PlainDriveIO
from openhosting.storage.drive_storage import (
    FILES_PAGE,
    BodyDecoder,
    DriveBytes,
    DriveFile,
    ReadClosed,
    WriteClosed,
)
from openhosting.storage.storage_calls import encode_call
from openhosting.storage.stream_wire import STALL_TIMEOUT

T = TypeVar("T")

# Bytes per second a hash on the agent is given at the least (a slow disk's).
HASH_RATE = 20e6
# A write's bytes go to the agent in pieces of this size (the API request's body comes in
# pieces of tens of KiB: each handed over alone would cost a wake-up of the stream's thread).
SEND_PIECE = 1 << 20


class RemoteDriveStorage:
    """The drives of the host whose agent `agent` calls."""

    def __init__(self, agent: HostConnection, *, stall_timeout: float = STALL_TIMEOUT) -> None:
        self.agent = agent
        self.host = agent.host
        self._stall_timeout = stall_timeout
        self.reachable = True  # the last call's outcome (`is_available`)

    def unreachable(self, error: object) -> UnavailableError:
        """503 `failed`, as for a server on a host gone away: it may work once it is back."""
        self.reachable = False
        return UnavailableError(
            f"Host {self.host}'s agent at {self.agent.address} did not answer: {error}"
        )

    def failure(self, error: BaseException) -> ApiError:
        """What a stream's failure is to the API: the agent's refusal as it was, anything
        else (the network's, an answer not understood) a 503."""
        if isinstance(error, ApiError):
            self.reachable = True
            return error
        return self.unreachable(error)

    async def post(
        self, action: str, body: Any, timeout: aiohttp.ClientTimeout, area: str = "storage"
    ) -> aiohttp.ClientResponse:
        """Send one call (to `/AREA/ACTION`); the response once its status is known
        (refusals raised)."""
        try:
            response = await self.agent.session().post(
                f"{self.agent.base_url}/{area}/{action}",
                data=body,
                ssl=self.agent.context,
                server_hostname=self.host,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise self.unreachable(error) from None
        self.reachable = True
        if response.status != 200:
            try:
                refusal = await response.json()
            except (aiohttp.ClientError, ValueError, TimeoutError):
                refusal = {}
            finally:
                response.release()
            if not isinstance(refusal, dict):  # JSON, but not a refusal's: its status says
                refusal = {}
            kind = ERROR_TYPES.get(str(refusal.get("kind")), FailedError)
            message = refusal.get("error") or f"status {response.status}"
            raise kind(f"{message} (host {self.host})")
        return response

    async def _call(self, action: str, **fields: Any) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.agent.call_timeout)
        response = await self.post(action, encode_call(**fields), timeout)
        try:
            async with asyncio.timeout(self.agent.call_timeout):
                return answer_of(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise self.unreachable(error) from None
        finally:
            response.release()

    # -- DriveStorage ------------------------------------------------------------------

    def is_available(self, drive: str, tier: str) -> bool:
        return self.reachable

    def disk_path(self, drive: str, tier: str) -> Path:
        # The agent resolves the drive by UUID and tier in its own directory (DiskSpec.drive);
        # this path only says where, for logs.
        return Path(f"/{self.host}/{tier}/{drive}.img")

    async def create(
        self, drive: str, tier: str, size: int, passphrase: bytes | None
    ) -> bytes | None:
        # A LUKS format takes its key derivation's time (about a second).
        key = await self._call("create", drive=drive, tier=tier, size=size, passphrase=passphrase)
        return None if key is None else base64.b64decode(key)

    async def resize(
        self, drive: str, tier: str, size: int, master_key: bytes | None, kept: int
    ) -> None:
        await self._call(
            "resize", drive=drive, tier=tier, size=size, kept=kept, master_key=master_key
        )

    async def destroy(self, drive: str, tier: str) -> None:
        await self._call("destroy", drive=drive, tier=tier)

    async def hash(
        self, drive: str, tier: str, master_key: bytes | None, offset: int, count: int
    ) -> str:
        fields = dict(drive=drive, tier=tier, master_key=master_key, offset=offset, count=count)
        # Hashing reads the whole range on the agent before a byte of answer: its deadline
        # grows with the range, at HASH_RATE at worst.
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.agent.connect_timeout,
            total=self._stall_timeout + count / HASH_RATE,
        )
        response = await self.post("hash", encode_call(**fields), timeout)
        try:
            return str(answer_of(await response.json()))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise self.unreachable(error) from None
        finally:
            response.release()

    async def list_files(self, after: str, limit: int = FILES_PAGE) -> list[DriveFile]:
        answer = await self._call("files", after=after, limit=limit)
        try:
            return [
                DriveFile(str(drive), str(tier), int(size), float(age))
                for drive, tier, size, age in answer
            ]
        except (TypeError, ValueError) as error:
            raise self.unreachable(f"a listing not understood: {error}") from None

    async def remove_orphan(self, drive: str, tier: str, age: float) -> bool:
        return bool(await self._call("remove_orphan", drive=drive, tier=tier, age=int(age)))

    def open_read(
        self, drive_bytes: DriveBytes, offset: int, count: int, on_close: ReadClosed
    ) -> RemoteRead:
        return RemoteRead(self, drive_bytes, offset, count, on_close)

    def open_write(
        self,
        drive_bytes: DriveBytes,
        offset: int,
        size: int,
        staged: bool,
        on_close: WriteClosed,
        decoder: BodyDecoder | None = None,
    ) -> RemoteWrite:
        call = dict(**_named(drive_bytes), offset=offset, size=size)
        return RemoteWrite(self, call, staged, on_close, decoder)

    async def close(self) -> None:
        await self.agent.close()

    def read_stream(self, call: dict[str, Any], count: int) -> ReadStream:
        return ReadStream(self.agent, call, count, self._stall_timeout)

    def write_stream(self, call: dict[str, Any], action: str = "write") -> WriteStream:
        return WriteStream(self.agent, call, self._stall_timeout, action)


class RemoteRead:
    """A range of a drive on another host, streamed from its agent as it is sent on."""

    plain_file: PlainDriveIO | None = None  # never this host's file: no sendfile

    def __init__(
        self,
        storage: RemoteDriveStorage,
        drive_bytes: DriveBytes,
        offset: int,
        count: int,
        on_close: ReadClosed,
    ) -> None:
        self._storage = storage
        self.drive, self._drive_bytes = drive_bytes.drive, drive_bytes
        self.offset, self.count = offset, count
        self._on_close = on_close
        self._stream: ReadStream | None = None
        self._closed = False

    async def begin(self) -> None:
        """Ask the agent for the bytes: its refusal (the file gone) comes from here."""
        fields = dict(**_named(self._drive_bytes), offset=self.offset, count=self.count)
        self._stream = self._storage.read_stream(fields, self.count)
        try:
            await self._stream.begin()
        except Exception as error:  # the stream's thread's, raised here
            raise self._storage.failure(error) from None
        self._storage.reachable = True

    async def chunks(self) -> AsyncIterator[bytes | bytearray]:
        if self._stream is None:
            await self.begin()
        assert self._stream is not None
        try:
            async for piece in self._stream.pieces():
                yield piece
        except Exception as error:  # the stream's thread's, raised here
            raise self._storage.failure(error) from None

    async def send_to(self, client: socket.socket) -> None:
        """Send the bytes to `client` from the stream's thread (`ReadStream.send_to`): the
        API's answer to a remote read, its headers already sent. `ClientGone` if the client
        goes; the agent's failure as `chunks` raises it."""
        if self._stream is None:
            await self.begin()
        assert self._stream is not None
        try:
            await self._stream.send_to(client)
        except ClientGone:
            raise
        except Exception as error:  # the stream's thread's, raised here
            raise self._storage.failure(error) from None

    async def sha256(self) -> str:
        named = self._drive_bytes
        return await self._storage.hash(
            named.drive, named.tier, named.master_key, self.offset, self.count
        )

    def reads_only_zeros(self) -> bool:
        return False  # not known without asking: the bytes are sent

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            self._stream.close()  # a read cut short drops its connection
        self._on_close()


class RemoteWrite:
    """One write to a drive on another host: its bytes go to the agent as they come, a few
    pieces ahead of its socket at most; acknowledged once the agent answers that they are
    durable. A body that comes encoded is decoded here, by `decoder`, and its bytes sent
    staged."""

    def __init__(
        self,
        storage: RemoteDriveStorage,
        call: dict[str, Any],
        staged: bool,
        on_close: WriteClosed,
        decoder: BodyDecoder | None = None,
    ) -> None:
        self._storage = storage
        self._call = call
        self._staged = staged
        self._on_close = on_close
        self._decoder = decoder
        self._position = int(call["offset"])  # where the next byte goes
        self._gathered = bytearray()  # the next piece to hand over
        self._stream: WriteStream | None = None
        self._closed = False

    @property
    def remaining(self) -> int:
        return int(self._call["size"]) - self._position

    async def reserve(self, length: int) -> None:
        """The range's blocks given on the agent before any byte goes (507 then)."""
        await self._storage._call("allocate", **self._call, count=length)

    async def write(self, data: bytes) -> None:
        if self._decoder is None:
            await self._send(data)
            return
        for piece in self._decoder.feed(data):
            await self._send(piece)

    async def _send(self, data: bytes) -> None:
        if len(data) > self.remaining:
            raise FullError(
                f"Write past the end of drive {self._call['drive']} ({self._call['size']}"
                " bytes): nothing was written beyond the end"
            )
        self._position += len(data)
        self._gathered += data
        if len(self._gathered) >= SEND_PIECE:
            piece, self._gathered = self._gathered, bytearray()
            await self._failing(self._started().put(piece))

    def _started(self) -> WriteStream:
        if self._stream is None:
            self._stream = self._storage.write_stream({**self._call, "staged": self._staged})
            self._stream.start(f"drive-write-{self._storage.host}")
        return self._stream

    async def _failing(self, step: Awaitable[T]) -> T:
        try:
            return await step
        except Exception as error:  # the stream's thread's, raised here
            raise self._storage.failure(error) from None

    async def finish(self) -> int:
        """The end of the bytes sent; the agent's count once it made them durable."""
        if self._decoder is not None:
            self._decoder.finish()  # a body cut short or damaged: nothing sent is applied
        async with Reverter() as revert:
            revert.add(self.abort)
            stream = self._started()
            if self._gathered:
                piece, self._gathered = self._gathered, bytearray()
                await self._failing(stream.put(piece))
            written = await self._failing(stream.end())
            revert.success()
        self._storage.reachable = True
        self._close(written)
        return written

    async def abort(self) -> None:
        """Give up: the connection to the agent is cut before the end of the bytes (the
        agent aborts the write: a staged one changes nothing)."""
        if self._stream is not None:
            self._stream.give_up()
            with contextlib.suppress(Exception):  # given up: its outcome is no news
                await self._stream.outcome
        self._close(None)

    def _close(self, written: int | None) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(written)


def _named(drive_bytes: DriveBytes) -> dict[str, str | bytes | None]:
    """The fields of a storage call that name a drive's bytes."""
    return {
        "drive": drive_bytes.drive,
        "tier": drive_bytes.tier,
        "master_key": drive_bytes.master_key,
    }


def answer_of(body: Any) -> Any:
    """The `answer` of an agent's call's JSON body; ValueError when it has none (a bad answer
    is the agent's failure, 503, not a TypeError of ours, 500)."""
    if not isinstance(body, dict) or "answer" not in body:
        raise ValueError(f"an answer not understood: {str(body)[:80]!r}")
    return body["answer"]
