"""Moving a drive's bytes for one request: a read sent from the drive file (sendfile, or
decrypted a piece ahead in a worker thread), or hashed instead of sent; a raw write flushed
in large pieces while the next arrives, acknowledged once durable; a staged write (a gzip
body) kept aside until its end proves it good, then applied whole. These are the local
storage's (storage/local_storage.py); `Drives` (services) checks who may do it and counts it."""

import asyncio
import collections
import contextlib
import mmap
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from openhosting.errors import FullError, UsageError
from openhosting.storage.drive_files import (
    IO_CHUNK,
    EncryptedDriveIO,
    OpenDrive,
    PlainDriveIO,
    is_disk_full,
    is_too_large,
)
from openhosting.storage.drive_hash import hash_range
from openhosting.storage.drive_storage import BodyDecoder
from openhosting.storage.sparse import ZERO_BLOCK
from openhosting.storage.transfer_threads import in_transfer_thread
from openhosting.storage.write_stage import WriteStage
from openhosting.storage.xts import SECTOR_SIZE

# Pieces read and decrypted ahead of the one being sent, each in a worker thread: two keep
# both cores of a small host busy (bench drive-read-encrypted).
READ_AHEAD = 2
# Pieces of a raw write being encrypted and written at once, each in a worker thread.
WRITE_AHEAD = 2
# Bytes of a staged write's body queued for its thread at most before the request waits for
# it (a 5 MiB gzip chunk of the upload tool is about 3 MiB: never waits).
QUEUED_BOUND = 4 * 1024 * 1024


def storage_error(error: OSError, action: str) -> Exception:
    """The API error a failed file operation stands for (507 full, 400 too large), or the
    error itself when it is a fault of ours."""
    if is_disk_full(error):
        return FullError(f"Cannot {action}: the platform's storage is full")
    if is_too_large(error):
        return UsageError(f"Cannot {action}: size too large for this platform")
    return error


@dataclass
class ReadPlan:
    """What a read will send: `count` bytes from `offset` of an open drive."""

    drive: str
    opened: OpenDrive
    offset: int
    count: int
    on_close: Callable[[], None] = lambda: None

    async def begin(self) -> None:
        """Nothing to wait for: the file is open (a remote read opens its stream here)."""

    @property
    def plain_file(self) -> PlainDriveIO | None:
        """The plain drive file, for sendfile; None when bytes must be decrypted."""
        return self.opened.io if isinstance(self.opened.io, PlainDriveIO) else None

    async def chunks(self) -> AsyncIterator[bytes | bytearray]:
        """The bytes, `IO_CHUNK` at a time, each read (and decrypted) in a worker thread.

        The next `READ_AHEAD` pieces are read and decrypted, each in a thread of its own,
        while this one goes out: decryption costs more than sending, so one thread alone
        would keep the socket waiting."""
        position, end = self.offset, self.offset + self.count
        pending: collections.deque[asyncio.Future[bytes | bytearray]] = collections.deque()
        try:
            while position < end or pending:
                while position < end and len(pending) <= READ_AHEAD:
                    length = min(IO_CHUNK, end - position)
                    pending.append(
                        asyncio.ensure_future(
                            asyncio.to_thread(self.opened.io.read_at, position, length)
                        )
                    )
                    position += length
                yield await pending.popleft()
        finally:
            for future in pending:
                with contextlib.suppress(Exception):
                    await future  # its thread holds the file: let it finish before close

    async def lent_pieces(self) -> AsyncGenerator[memoryview, None]:
        """The bytes of an encrypted drive, in order, as `chunks` gives them, but each piece
        read and decrypted in place (by a worker thread, `READ_AHEAD` pieces ahead) in one
        of a few buffers of this read's own, and only lent: its buffer is read into again
        once the piece after the next is asked for, so the caller must have sent it (no
        reference kept, in a transport's buffer either) before asking for the next. No
        buffer made, zeroed and faulted in per piece: `chunks` made one of 4 MiB each.

        Pieces start on sector boundaries after the first, so that each is one in-place
        pass over whole sectors."""
        drive_io = self.opened.io
        if not isinstance(drive_io, EncryptedDriveIO):
            raise TypeError("lent_pieces reads encrypted drives; a plain one is sent by sendfile")
        if self.count <= 0:
            return  # at or past the drive's end: nothing to read, no buffer to make
        end = self.offset + self.count
        first = self.offset - self.offset % SECTOR_SIZE  # where the first piece's sector starts
        span = min(IO_CHUNK, _whole_sectors(end) - first)
        # One piece lent, up to READ_AHEAD + 1 being read: each its own buffer. Anonymous
        # maps are page-aligned and unmapped once the last view of them is gone.
        ring = [mmap.mmap(-1, span) for _ in range(min(READ_AHEAD + 2, -(-(end - first) // span)))]
        pending: collections.deque[asyncio.Future[memoryview]] = collections.deque()
        at, made = first, 0
        try:
            while at < end or pending:
                while at < end and len(pending) <= READ_AHEAD:
                    sectors = min(IO_CHUNK, _whole_sectors(end) - at)
                    buffer = memoryview(ring[made % len(ring)])[:sectors]
                    piece = buffer[max(self.offset, at) - at : min(at + IO_CHUNK, end) - at]
                    pending.append(
                        asyncio.ensure_future(
                            asyncio.to_thread(_read_piece, drive_io, at, buffer, piece)
                        )
                    )
                    at, made = at + sectors, made + 1
                yield await pending.popleft()
        finally:
            for future in pending:
                with contextlib.suppress(Exception):
                    await future  # its thread holds the file and a buffer: let it finish

    async def sha256(self) -> str:
        """The hex SHA-256 of the range, hashed in a worker thread. A cancelled caller (its
        client went away) stops the thread at its next piece and waits for it, so that
        `close` never closes the file under it."""
        stop = threading.Event()
        work = in_transfer_thread(hash_range, self.opened.io, self.offset, self.count, stop)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception):  # the request is gone: nobody reads the outcome
                await work
            raise

    def reads_only_zeros(self) -> bool:
        """Whether the whole range was never written: it reads as zeros, nothing to send."""
        return self.count > 0 and self.opened.io.holds_no_data(self.offset, self.count)

    def close(self) -> None:
        self.opened.io.close()
        self.on_close()


def _whole_sectors(size: int) -> int:
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def _read_piece(
    drive_io: EncryptedDriveIO, at: int, buffer: memoryview, piece: memoryview
) -> memoryview:
    """Decrypt the sectors from payload byte `at` into `buffer`; `piece` is the part of it
    that was asked for."""
    drive_io.read_sectors_into(at // SECTOR_SIZE, buffer)
    return piece


class _WriteRequest:
    """What the writers of one write request share: the drive opened for it, closed once,
    which tells `on_close` the bytes written (None when aborted)."""

    def __init__(
        self, uuid: str, opened: OpenDrive, on_close: Callable[[int | None], None]
    ) -> None:
        self._uuid, self._opened, self._on_close = uuid, opened, on_close
        self._closed = False

    def _close(self, counted: int | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._opened.io.close()
        self._on_close(counted)  # the bytes written, None when aborted


class DriveWriter(_WriteRequest):
    """One write request: bytes in order from `offset`, flushed in large pieces by worker
    threads (up to `WRITE_AHEAD` pieces at once, so that encrypting one overlaps the next)
    while the next piece arrives, acknowledged only after `finish` has made them durable.
    Each piece's write-back to disk starts as soon as it is written, so that the final
    fdatasync finds little left to do."""

    def __init__(
        self,
        uuid: str,
        opened: OpenDrive,
        offset: int,
        size: int,
        on_close: Callable[[int | None], None],
    ) -> None:
        super().__init__(uuid, opened, on_close)
        self._position = offset  # where the next flushed byte goes
        self._size = size
        self._buffer = bytearray()
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._written = 0

    @property
    def remaining(self) -> int:
        """How many more bytes fit before the drive's end."""
        return self._size - self._position - len(self._buffer)

    async def reserve(self, length: int) -> None:
        """Give the next `length` bytes' range its disk blocks before any byte is written: a
        full platform refuses the write (507) with the drive unchanged, never half-way."""
        try:
            await asyncio.to_thread(self._opened.io.allocate, self._position, length)
        except OSError as error:
            raise storage_error(error, "write to the drive") from None

    async def write(self, data: bytes) -> None:
        if len(data) > self.remaining:
            raise FullError(
                f"Write past the end of drive {self._uuid} ({self._size} bytes): nothing was"
                " written beyond the end"
            )
        self._buffer += data
        if len(self._buffer) >= IO_CHUNK:
            await self._flush(whole_blocks=True)

    async def _flush(self, whole_blocks: bool = False) -> None:
        """Hand the buffer to a worker thread; with `whole_blocks`, only up to the last
        ZERO_BLOCK boundary it reaches (the rest stays): a run of zeros cut between two
        pieces would leave the file system block at the cut written with zeros, where whole
        blocks of zeros are holes."""
        while len(self._pending) >= WRITE_AHEAD:
            await self._wait(self._pending.popleft())
        if not self._buffer:
            return
        # Hand the buffer itself to the worker thread and start a new one: copying it to
        # bytes cost about a sixth of the gzip upload's throughput (bench drive-upload).
        data, self._buffer = self._buffer, bytearray()
        if whole_blocks:
            cut = len(data) - (self._position + len(data)) % ZERO_BLOCK
            self._buffer = data[cut:]
            del data[cut:]
        position = self._position
        self._position += len(data)
        self._written += len(data)
        self._pending.append(asyncio.ensure_future(asyncio.to_thread(self._put, position, data)))

    def _put(self, position: int, data: bytearray) -> None:
        drive_io = self._opened.io
        if isinstance(drive_io, PlainDriveIO):  # its zeros as holes, the blocks reserved freed
            drive_io.write_keeping_holes(position, [data])
            return
        drive_io.write_at(position, data)
        drive_io.start_writeback(position, len(data))

    async def _wait(self, pending: "asyncio.Future[None]") -> None:
        try:
            await pending
        except OSError as error:
            raise storage_error(error, "write to the drive") from None

    async def finish(self) -> int:
        """Write what is left, make it durable, count it; returns the bytes written."""
        await self._flush()
        while self._pending:  # the last pieces
            await self._wait(self._pending.popleft())
        try:
            await asyncio.to_thread(self._opened.io.sync)
        except OSError as error:
            raise storage_error(error, "write to the drive") from None
        self._close(self._written)
        return self._written

    async def abort(self) -> None:
        """Give up: wait for a piece in flight (its thread cannot be stopped), close."""
        while self._pending:
            with contextlib.suppress(OSError):  # the write is being refused anyway
                await self._pending.popleft()
        self._close(None)


class StagedDriveWriter(_WriteRequest):
    """One write whose bytes reach the drive only once all of them are known good (a gzip
    body, valid or not only at its end): staged as they come (`WriteStage`), applied and
    made durable by `finish`. Until then, and after `abort`, the drive is as it was.

    Everything done to the bytes (decoding the body with `decoder`, staging, applying and
    syncing) happens in a worker thread, in order; the event loop only queues the pieces as
    they arrive. So a gzip body is inflated while the rest of it arrives, not between its
    pieces on the loop, and one job of the thread handles every piece queued while it runs:
    a body that arrives faster than it inflates (any, over a fast link) costs one thread hop,
    applied and synced by the same job right after its end is checked."""

    def __init__(
        self,
        uuid: str,
        opened: OpenDrive,
        stage: WriteStage,
        room: int,
        on_close: Callable[[int | None], None],
        decoder: BodyDecoder | None = None,
    ) -> None:
        super().__init__(uuid, opened, on_close)
        self._stage = stage
        self._room = room  # bytes from the offset to the drive's end
        self._decoder = decoder
        self._lock = threading.Lock()  # the queue and `_working`, shared with the thread
        self._queue: collections.deque[bytes | None] = collections.deque()  # None: the end
        self._queued = 0  # bytes in the queue
        self._working = False  # a job of the thread is handling the queue
        self._job: asyncio.Future[None] | None = None  # the last job started
        self._failure: Exception | None = None  # what refused the write (set by the thread)
        self._stopped = False  # aborted: the thread drops what is queued

    @property
    def remaining(self) -> int:
        return self._room - self._stage.length

    async def reserve(self, length: int) -> None:
        """Nothing now: `finish` gives the range its blocks before applying a byte."""

    async def write(self, data: bytes) -> None:
        self._raise_failure()
        # Queued as it is: the caller's buffer may be reused (the agent's frames are).
        queued = self._enqueue(data if type(data) is bytes else bytes(data))
        if queued > QUEUED_BOUND:  # the client is ahead of the thread: memory stays flat
            await self._settled()
            self._raise_failure()

    async def finish(self) -> int:
        """Apply the staged bytes, make them durable, count them; returns how many."""
        self._raise_failure()
        self._enqueue(None)
        await self._settled()
        self._raise_failure()
        written = self._stage.length
        self._close(written)
        return written

    async def abort(self) -> None:
        """Give up: the staged bytes are dropped, the drive was never touched."""
        self._stopped = True
        await self._settled()  # a piece in the thread's hands cannot be taken back
        await asyncio.to_thread(self._stage.discard)
        self._close(None)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _enqueue(self, piece: bytes | None) -> int:
        """Queue `piece` for the thread, starting a job unless one is running; returns the
        bytes queued."""
        with self._lock:
            self._queue.append(piece)
            self._queued += len(piece) if piece is not None else 0
            queued, start = self._queued, not self._working
            self._working = True
        if start:
            self._job = in_transfer_thread(self._work)
        return queued

    async def _settled(self) -> None:
        """Until the thread has handled everything queued (nothing is queued meanwhile: the
        caller waits here). Shielded: a cancelled request must not close the staging file
        under a thread that still uses it (`abort` waits again)."""
        if self._job is not None:
            await asyncio.shield(self._job)

    def _work(self) -> None:
        """A job of the thread: the queued pieces in order, until none is left."""
        while True:
            with self._lock:
                if not self._queue:
                    self._working = False
                    return
                piece = self._queue.popleft()
                self._queued -= len(piece) if piece is not None else 0
            if self._failure is not None or self._stopped:
                continue  # refused or given up: the rest is dropped
            try:
                if piece is None:
                    self._end()
                else:
                    self._stage_piece(piece)
            except OSError as error:
                self._failure = storage_error(error, "write to the drive")
            except Exception as error:  # raised on the event loop, by the request
                self._failure = error

    def _stage_piece(self, piece: bytes) -> None:
        for data in self._decoder.feed(piece) if self._decoder is not None else (piece,):
            if len(data) > self.remaining:
                raise FullError(
                    f"Write past the end of drive {self._uuid} ({self._room} bytes from the"
                    " offset): nothing was written"
                )
            self._stage.append(data)
            if self._stage.wants_spill():
                self._stage.spill()

    def _end(self) -> None:
        if self._decoder is not None:
            self._decoder.finish()  # a body cut short or damaged is refused here
        self._stage.apply()
