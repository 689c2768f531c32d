"""Imaging through the storage seam: fill one drive from another when they are not both this
host's files (a drive on an agent's host on either side, or both).

The source is read as a stream of its decrypted bytes (`DriveStorage.open_read`), converted
here (copied, gzipped or gunzipped, as storage/imaging.py's pipelines do), and written through
the destination's storage (`open_write`), each write acknowledged once durable. The same
contract as the local pipelines: the destination is emptied first (every byte a hole), the
output is written from offset 0 and cut at its size, the rest reads as zeros. On a plain
destination, zero runs of at least `ZERO_RUN` bytes end the write under way and are not sent
(holes); shorter ones are written, so that a drive of scattered zeros is not one request per
run. On an encrypted destination every byte produced is written as ciphertext.

The conversion and the `Tracker` (progress, pace, stop) run through `offload` (a worker
thread): the tracker's reports write the database, and inflating may take a while.
"""

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from isal import isal_zlib

from openhosting.reverter import Reverter
from openhosting.storage.drive_storage import DriveBytes, DriveStorage, DriveWrite
from openhosting.storage.gzip_stream import GZIP_WBITS, INFLATE_PIECE, GzipMembers
from openhosting.storage.imaging import GZIP_LEVEL, Tracker

T = TypeVar("T")


class Offload(Protocol):
    """Runs blocking work off the event loop (the imaging jobs' threads)."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]: ...


# A plain destination's zeros this long, or longer, are left as holes (the write under way
# ends, the next begins after them); shorter ones are sent as they are.
ZERO_RUN = 8 * 1024 * 1024
# Output taken from the inflater per hop to the worker thread: memory stays bounded however
# much a small input inflates to.
OUTPUT_BATCH = 8 * 1024 * 1024
# A plain destination's output is looked at for zeros in pieces of this size; zeros are sent
# in pieces of this size at most.
ZERO_PIECE = 1024 * 1024
_ZEROS = bytes(ZERO_PIECE)


@dataclass(frozen=True)
class StreamEnd:
    """One side of an imaging through the seam: a drive of some host's storage."""

    storage: DriveStorage
    drive: str
    tier: str
    master_key: bytes | None
    size: int

    @property
    def plain(self) -> bool:
        return self.master_key is None


async def stream_image(
    conversion: str,
    src: StreamEnd,
    dst: StreamEnd,
    tracker: Tracker,
    offload: Offload,
    empty: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Fill DST from SRC by `conversion` ("", "gzip", "gunzip"); DST is durable on return.

    `empty` makes every byte of DST a hole; by default a resize of DST's storage that keeps
    none of its bytes (a LUKS header stays). A DST of this host is better emptied by punching
    holes (storage/imaging.py's `empty`), which keeps its file's size for a read under way.

    GzipStreamError when a gunzip's SRC holds no whole gzip stream, ImagingStopped when the
    tracker is told to stop; the storages' errors (503 failed, 507 full) as they come."""
    if empty is None:
        await dst.storage.resize(dst.drive, dst.tier, dst.size, dst.master_key, 0)
    else:
        await empty()
    await offload(functools.partial(tracker.begin, src.size))
    read = src.storage.open_read(
        DriveBytes(src.drive, src.tier, src.master_key), 0, src.size, _nothing
    )
    sink = _Sink(dst)
    try:
        await read.begin()
        async with Reverter() as revert:
            revert.add(sink.abort)
            convert = _CONVERTERS[conversion]()
            # Closed before the read is, even when left early: its reads ahead end first.
            async with _closing(read.chunks()) as chunks:
                async for piece in chunks:
                    # The conversion runs in the worker thread a batch at a time.
                    produced = convert.feed(piece)
                    while batch := await offload(functools.partial(_take, produced, OUTPUT_BATCH)):
                        if not await sink.put_all(batch):
                            break
                    await offload(functools.partial(tracker.advance, len(piece)))
                    if sink.full or convert.ended:
                        break
            if not sink.full:
                tail = convert.finish()
                while batch := await offload(functools.partial(_take, tail, OUTPUT_BATCH)):
                    if not await sink.put_all(batch):
                        break
            await offload(tracker.tick)
            await sink.finish()
            revert.success()
    finally:
        read.close()


@contextlib.asynccontextmanager
async def _closing(
    chunks: AsyncIterator[bytes | bytearray],
) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
    """`chunks`, closed at the block's end when it is a generator (its `finally` waits for
    the reads under way, before the caller closes the drive under them)."""
    try:
        yield chunks
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()


def _nothing() -> None:
    """A read of a job is counted by nobody (the job row shows its progress)."""


def _take(pieces: Iterator[bytes], limit: int) -> list[bytes]:
    """The next pieces of `pieces`, up to about `limit` bytes (run in the worker thread)."""
    taken: list[bytes] = []
    size = 0
    for piece in pieces:
        taken.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return taken


class _Copy:
    """The bytes as they are."""

    ended = False

    def feed(self, piece: bytes | bytearray) -> Iterator[bytes]:
        return iter([bytes(piece)] if piece else [])

    def finish(self) -> Iterator[bytes]:
        return iter([])


class _Gzip:
    """A gzip stream of the bytes (ISA-L's level 1, as the local pipeline)."""

    ended = False

    def __init__(self) -> None:
        self._compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)

    def feed(self, piece: bytes | bytearray) -> Iterator[bytes]:
        return (out for out in [self._compressor.compress(piece)] if out)

    def finish(self) -> Iterator[bytes]:
        return iter([self._compressor.flush()])


class _Gunzip:
    """The gzip stream the bytes hold, inflated; whatever follows the stream is ignored."""

    def __init__(self) -> None:
        self._members = GzipMembers(INFLATE_PIECE)

    @property
    def ended(self) -> bool:
        return self._members.ended

    def feed(self, piece: bytes | bytearray) -> Iterator[bytes]:
        return self._members.feed(piece)

    def finish(self) -> Iterator[bytes]:
        # A generator, so that the check runs in the worker thread with the rest.
        def check() -> Iterator[bytes]:
            self._members.finish()
            yield from ()

        return check()


_CONVERTERS: dict[str, Callable[[], _Copy | _Gzip | _Gunzip]] = {
    "": _Copy,
    "gzip": _Gzip,
    "gunzip": _Gunzip,
}


class _Sink:
    """DST's writes: output appended from offset 0, cut at DST's size, long zero runs of a
    plain DST skipped (holes), every write finished (durable) before the next begins."""

    def __init__(self, dst: StreamEnd) -> None:
        self._dst = dst
        self._position = 0  # where the next output byte goes
        self._zeros = 0  # output zeros held back (a count), just before `_position`
        self._write: DriveWrite | None = None
        self.full = False

    async def put_all(self, pieces: list[bytes]) -> bool:
        """Take the pieces in order; False once DST is full (the rest was cut)."""
        for piece in pieces:
            if not await self.put(piece):
                return False
        return True

    async def put(self, data: bytes) -> bool:
        room = self._dst.size - self._position - self._zeros
        if len(data) >= room:
            data, self.full = data[:room], True
        if not self._dst.plain:
            if data:
                await self._send(data)
            return not self.full
        # Looked at a `ZERO_PIECE` at a time: a piece that is mostly zeros still leaves them.
        for at in range(0, len(data), ZERO_PIECE):
            piece = data[at : at + ZERO_PIECE]
            if piece.count(0) == len(piece):
                self._zeros += len(piece)
                if self._zeros >= ZERO_RUN and self._write is not None:
                    await self._end_write()  # a hole begins: what follows, a write of its own
            else:
                await self._send(piece)
        return not self.full

    async def _send(self, data: bytes) -> None:
        if self._write is None:
            # A new write begins after the zeros held back: they stay holes.
            self._position += self._zeros
            self._zeros = 0
            dst = self._dst
            self._write = dst.storage.open_write(
                DriveBytes(dst.drive, dst.tier, dst.master_key),
                self._position, dst.size, False, _written,
            )  # fmt: skip
        while self._zeros:  # a short zero run inside data: sent as it is
            count = min(self._zeros, ZERO_PIECE)
            await self._write.write(_ZEROS[:count])
            self._zeros -= count
            self._position += count
        await self._write.write(data)
        self._position += len(data)

    async def _end_write(self) -> None:
        write, self._write = self._write, None
        if write is not None:
            await write.finish()

    async def finish(self) -> None:
        """The last write made durable (zeros at the end stay holes)."""
        await self._end_write()

    async def abort(self) -> None:
        write, self._write = self._write, None
        if write is not None:
            await write.abort()


def _written(count: int | None) -> None:
    """A write of a job is counted by nobody (the job row shows its progress)."""
