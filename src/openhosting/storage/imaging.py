"""Imaging pipelines: fill one drive from another, as a copy, as gzip, or by gunzip.

Knows nothing of users, jobs or the database: a pipeline takes two open drives (`Endpoint`)
and a `Tracker` that hears of progress, paces the work and says when to stop. Pipelines are
blocking and run in a worker thread; the expensive parts (direct writes, copy_file_range,
ISA-L, AES) release the GIL, so a gzip's or gunzip's reading, converting and writing run on
both cores at once, each in a thread of its own.

Every pipeline first empties the destination (its bytes become holes, which read as zeros),
then writes what the conversion produces from offset 0, cut at the destination's size. On a
plain destination all-zero pieces are skipped, since a hole already reads as zeros to
everyone. On an encrypted destination every byte the conversion produces is written as real
ciphertext, because QEMU reads a never-written LUKS sector as garbage, not zeros; only the
holes of a copy's source stay holes, as they were never written there either.
"""

import collections
import contextlib
import errno
import itertools
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from isal import isal_zlib

from openhosting.errors import FailedError
from openhosting.storage.drive_files import EncryptedDriveIO, PlainDriveIO
from openhosting.storage.gzip_stream import GZIP_WBITS, INFLATE_PIECE, GzipMembers
from openhosting.storage.luks import payload_offset
from openhosting.storage.sparse import (
    DIRECT_ALIGNMENT,
    DirectCopy,
    clone_range,
    copy_range,
    data_extents,
    data_runs,
    is_zero,
    open_direct,
    punch_hole,
    start_writeback,
)

# Large pieces amortise system calls, AES passes and compressor calls; memory stays flat.
CHUNK = 8 * 1024 * 1024
ZERO_CHUNK = bytes(CHUNK)
# ISA-L's levels run 0-3; level 1 compresses at several hundred MB/s.
GZIP_LEVEL = 1
# Chunks handed to the writer thread and not yet written: with one, every slow write (the disk
# is shared) held the inflater still until it ended; a few absorb those stalls. Memory stays
# bounded: this many chunks, plus one being filled.
WRITES_QUEUED = 3
# Pieces of a stream waiting for its staging thread: enough to ride over a slow moment of it.
PIECES_QUEUED = 4
CONVERSIONS = ("", "gzip", "gunzip")


class ImagingStopped(FailedError):
    """The pipeline was asked to stop before it finished (the daemon is stopping)."""


@dataclass(frozen=True)
class Endpoint:
    """One side of an imaging: an open drive and its size in bytes."""

    io: PlainDriveIO | EncryptedDriveIO
    size: int
    base: int  # where the drive's bytes start in its file (the LUKS payload offset)

    @classmethod
    def of(cls, io: PlainDriveIO | EncryptedDriveIO, size: int) -> "Endpoint":
        base = 0 if isinstance(io, PlainDriveIO) else payload_offset(io.path)
        return cls(io, size, base)

    @property
    def plain(self) -> bool:
        return isinstance(self.io, PlainDriveIO)


class Tracker:
    """Progress of one pipeline: counts source bytes done, reports them now and then
    (`report(done, total)`, at most every `interval` seconds), holds the pace to `max_rate`
    bytes per second (0: no limit) and raises ImagingStopped once `stop` is set."""

    def __init__(
        self,
        report: Callable[[int, int], None] | None = None,
        *,
        stop: threading.Event | None = None,
        max_rate: int = 0,
        interval: float = 0.5,
    ) -> None:
        self._report = report
        self._stop = stop or threading.Event()
        self._max_rate = max_rate
        self._interval = interval
        self._started = self._last_report = time.monotonic()
        self.done = self.total = 0

    def begin(self, total: int) -> None:
        self.total = total
        self._started = time.monotonic()
        self.tick(force=True)

    def advance(self, nbytes: int, *, paced: bool = True) -> None:
        """`nbytes` more source bytes are done."""
        self.done += nbytes
        while paced and self._max_rate:
            ahead = self.done / self._max_rate - (time.monotonic() - self._started)
            if ahead <= 0:
                break
            # Wait in slices, reporting between them, so a long wait hides nothing.
            self._stop.wait(min(ahead, self._interval))
            self.tick()
        self.tick()

    def tick(self, *, force: bool = False) -> None:
        """Report if it is time to, and stop if asked to."""
        if self._stop.is_set():
            raise ImagingStopped("imaging was stopped")
        now = time.monotonic()
        if self._report is not None and (force or now - self._last_report >= self._interval):
            self._last_report = now
            self._report(self.done, self.total)


def copy(src: Endpoint, dst: Endpoint, tracker: Tracker) -> None:
    """DST receives SRC's bytes, only SRC's data regions moving (cloned where possible)."""
    length = min(src.size, dst.size)
    empty(dst)
    if src.plain and dst.plain and _clone(src, dst, length):
        tracker.begin(length)
        tracker.advance(length, paced=False)
        dst.io.sync()
        return
    with _seekable(src) as fd, _Writer(dst) as out, _direct(src, dst) as direct:
        tracker.begin(sum(end - first for first, end in _extents(fd, src, length)))
        for first, end in _extents(fd, src, length):
            position = first
            if direct is not None:
                position = direct.copy_range(first, end, tracker.advance)
            if src.plain and dst.plain:
                position = copy_range(_fileno(src), _fileno(dst), position, end, tracker.advance)
            _copy_pieces(src, out, position, end, tracker)
        if direct is not None:
            direct.wait()
        out.finish()


def gzip(src: Endpoint, dst: Endpoint, tracker: Tracker) -> None:
    """DST receives a gzip stream of all of SRC's bytes."""
    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)
    with _streaming(src, dst, tracker) as (pieces, out):
        for piece in pieces:
            if not out.write(compressor.compress(piece)):
                break  # DST is full: the rest is cut
            tracker.advance(len(piece))
        else:
            out.write(compressor.flush())


def gunzip(src: Endpoint, dst: Endpoint, tracker: Tracker) -> None:
    """DST receives the decompressed gzip stream that SRC holds; padding after it is ignored.

    GzipStreamError when SRC does not hold a whole gzip stream. ISA-L inflates in this thread
    (it lets go of the GIL while it works) while a thread of its own reads SRC ahead and the
    writer's thread writes what came out: no process or pipe between them."""
    members = GzipMembers(INFLATE_PIECE)
    with _streaming(src, dst, tracker) as (pieces, out):
        for piece in pieces:
            for data in members.feed(piece):
                if not out.write(data):
                    break
            if out.full or members.ended:
                break
            tracker.advance(len(piece))
        if not out.full:
            members.finish()


PIPELINES: dict[str, Callable[[Endpoint, Endpoint, Tracker], None]] = {
    "": copy,
    "gzip": gzip,
    "gunzip": gunzip,
}


class _Writer:
    """Writes into DST from a thread of its own, in order, so the next pieces are read,
    inflated or compressed while these are encrypted and written; at most `WRITES_QUEUED`
    waiting keeps memory flat. Each write's disk write-back starts at once, so `finish` has
    little left to wait for. On a plain DST all-zero data is not written: it is a hole
    already.

    A stream fills whole chunks in the writer's own staging buffers (`chunk_buffer`,
    `write_chunk`): page-aligned, so a plain DST takes them with O_DIRECT as they are, and
    the same few reused for the whole job, so no memory is given back and faulted in again
    while it runs."""

    def __init__(self, dst: Endpoint) -> None:
        self._dst = dst
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="imaging-write")
        self._pending: collections.deque[Future[None]] = collections.deque()
        self._hint_fd = os.open(dst.io.path, os.O_RDONLY | os.O_CLOEXEC)
        # A plain DST takes whole aligned runs with O_DIRECT, from page-aligned memory (see
        # `sparse.DirectCopy`: three times the page cache's write-back on the disks here).
        self._direct_fd = open_direct(dst.io.path) if dst.plain else None
        # One buffer being filled, the others waiting or being written; a written one comes
        # back here from the writer's thread.
        self._buffers_made = 0
        self._free_buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()

    def write(self, offset: int, data: bytes | bytearray) -> None:
        if not (self._dst.plain and is_zero(data)):
            self._queue(self._write, offset, data)

    def chunk_buffer(self) -> mmap.mmap:
        """A page-aligned buffer of `CHUNK` bytes to fill and hand to `write_chunk`, once
        fewer than `WRITES_QUEUED` writes wait (the first error of an earlier write is
        raised here)."""
        self._make_room()
        if self._buffers_made <= WRITES_QUEUED and self._free_buffers.empty():
            self._buffers_made += 1
            # Populated at once: one call faults the pages in, not one fault per page.
            return mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE)
        # Every write but the `WRITES_QUEUED - 1` waiting has ended and handed its buffer
        # back: there is one (the timeout only guards that reasoning).
        return self._free_buffers.get(timeout=600)

    def write_chunk(self, offset: int, buffer: mmap.mmap, length: int) -> None:
        """Write the first `length` bytes of `buffer` (from `chunk_buffer`) at `offset`;
        the buffer goes back to the writer once written."""
        self._queue(self._write_chunk, offset, (buffer, length))

    def _make_room(self) -> None:
        while len(self._pending) >= WRITES_QUEUED:
            self._pending.popleft().result()

    def _queue(self, write: Callable[[int, Any], None], offset: int, data: object) -> None:
        """Hand a write to the thread, once fewer than `WRITES_QUEUED` wait (the first error
        of an earlier write is raised here)."""
        self._make_room()
        self._pending.append(self._pool.submit(write, offset, data))

    def _write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._dst.io.write_at(offset, memoryview(data))
        start_writeback(self._hint_fd, self._dst.base + offset, len(data))

    def _write_chunk(self, offset: int, filled: tuple[mmap.mmap, int]) -> None:
        buffer, length = filled
        try:
            chunk = memoryview(buffer)[:length]
            if not self._dst.plain:  # encrypted whole, into the volume's own buffer
                self._write(offset, chunk)
                return
            for first, past in data_runs([chunk], offset):  # zeros stay holes
                self._write_plain(first, chunk[first - offset : past - offset])
            start_writeback(self._hint_fd, offset, length)
        finally:
            self._free_buffers.put(buffer)

    def _write_direct(self, offset: int, data: memoryview) -> bool:
        """Write aligned `data` with O_DIRECT; False where refused (the caller writes it
        through the page cache, as every later write will be)."""
        if self._direct_fd is None:
            return False
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._direct_fd, data[done:], offset + done)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            os.close(self._direct_fd)  # opened, yet refused: the page cache from now on
            self._direct_fd = None
            return False
        return True

    def _write_plain(self, offset: int, data: memoryview) -> None:
        """Write a run of a plain DST from a staging buffer (its place in the buffer is its
        place in the file, both page-aligned): the aligned part with O_DIRECT where it can,
        an unaligned tail (the end of a DST of odd size) through the page cache."""
        middle = len(data) // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT
        if offset % DIRECT_ALIGNMENT or not middle or not self._write_direct(offset, data[:middle]):
            middle = 0
        if middle < len(data):
            self._dst.io.write_at(offset + middle, data[middle:])

    def _wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def finish(self) -> None:
        """Wait for the last write and make everything durable."""
        self._wait()
        self._dst.io.sync()

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        # After a failure too, the write under way must end before DST's file is closed; the
        # ones queued behind it are dropped.
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._hint_fd)
        if self._direct_fd is not None:
            os.close(self._direct_fd)


class _ReadAhead:
    """The pieces of `pieces`, each read (and decrypted) in a thread of its own while the one
    before is inflated or compressed, so reading leaves the inflater's thread; one piece ahead
    keeps memory flat."""

    def __init__(self, pieces: Iterator[bytes | bytearray | memoryview]) -> None:
        self._pieces = pieces
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="imaging-read")

    def __iter__(self) -> Iterator[bytes | bytearray | memoryview]:
        ahead = self._pool.submit(next, self._pieces, None)  # None: no pieces left
        while (piece := ahead.result()) is not None:
            ahead = self._pool.submit(next, self._pieces, None)
            yield piece

    def __enter__(self) -> "_ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        # A read under way ends before SRC's file is closed.
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Chunks:
    """Fills the writer's staging buffers with what comes in and hands each whole `CHUNK` to
    the writer's thread; the last, short one at `flush`."""

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer
        self._position = 0  # where the buffer's first byte goes
        self._buffer: mmap.mmap | None = None
        self._filled = 0

    def add(self, view: memoryview) -> None:
        while view:
            if self._buffer is None:
                self._buffer = self._writer.chunk_buffer()
            taken = min(len(view), CHUNK - self._filled)
            self._buffer[self._filled : self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == CHUNK:
                self.flush()

    def flush(self) -> None:
        if self._buffer is None:
            return
        self._writer.write_chunk(self._position, self._buffer, self._filled)
        self._position += self._filled
        self._buffer, self._filled = None, 0


class _Stream:
    """A stream written into DST from offset 0, up to DST's size, in `CHUNK`s.

    What comes in goes to a staging thread of its own (at most `PIECES_QUEUED` pieces
    waiting), which copies it into the writer's page-aligned buffers and lets go of it at
    once; the thread that inflates or compresses does nothing else (copying there cost a
    gunzip ~0.1 s per GiB of its one busy core). Pieces are let go of as soon as they are
    copied, so the inflater's next one reuses their memory: pieces held until a chunk was
    whole, up to 32 MiB of them, made the allocator give memory back and fault it in again
    (~33,000 page faults per GiB, which slowed the inflater by a sixth)."""

    def __init__(self, writer: _Writer, size: int, tracker: Tracker) -> None:
        self._tracker = tracker
        self._room = size
        self._taken = 0
        self._chunks = _Chunks(writer)
        self._pieces: queue.Queue[memoryview | None] = queue.Queue(PIECES_QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._stage, name="imaging-stage", daemon=True)
        self._thread.start()
        self.full = False

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Take `data`; False once DST is full (the part that did not fit is dropped). The
        first error of the staging or writing is raised here."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        room = self._room - self._taken
        if len(view) > room:
            view, self.full = view[:room], True
        if view:
            # Counted before it is handed over: the staging thread lets go of the view as soon
            # as it is copied, which on a busy machine came before `len` here (the job failed
            # with an internal error, "operation forbidden on released memoryview object").
            chunks_before = self._taken // CHUNK
            self._taken += len(view)
            self._pieces.put(view)
            if self._taken // CHUNK != chunks_before:
                # A small input can inflate to a lot of output: let a stop request through.
                self._tracker.tick()
        return not self.full

    def close(self) -> None:
        """Everything taken is handed to the writer (raising the first error, if any)."""
        self._end()
        if self._error is not None:
            raise self._error
        self._chunks.flush()

    def _end(self) -> None:
        if self._thread.is_alive():
            self._pieces.put(None)
            self._thread.join()

    def _stage(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self._error is None:  # after an error, pieces are only taken (and dropped)
                try:
                    self._chunks.add(piece)
                except BaseException as error:  # raised in the stream's thread
                    self._error = error
            piece.release()

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        # After a failure too, the staging thread ends before the writer does.
        self._end()


@contextlib.contextmanager
def _streaming(
    src: Endpoint, dst: Endpoint, tracker: Tracker
) -> Iterator[tuple[_ReadAhead, _Stream]]:
    """SRC's pieces, read ahead, and DST (emptied first) as a stream: what gzip and gunzip
    turn the one into the other with. The stream is closed and DST written out when the
    block ends without an error."""
    empty(dst)
    tracker.begin(src.size)
    with (
        _seekable(src) as fd,
        _Writer(dst) as writer,
        _ReadAhead(_pieces(fd, src, src.size)) as pieces,
        _Stream(writer, dst.size, tracker) as out,
    ):
        yield pieces, out
        out.close()
        writer.finish()


def _copy_pieces(src: Endpoint, out: _Writer, first: int, end: int, tracker: Tracker) -> None:
    """Copy `[first, end)` through memory, decrypting and encrypting as the drives need."""
    position = first
    while position < end:
        length = min(CHUNK, end - position)
        data = src.io.read_at(position, length)
        if not data:
            return
        out.write(position, data)
        position += length
        tracker.advance(length)


def _pieces(fd: int, src: Endpoint, length: int) -> Iterator[bytes | bytearray | memoryview]:
    """SRC's first `length` bytes in pieces of at most `CHUNK`; holes cost no reads."""
    zeros = memoryview(ZERO_CHUNK)
    position = 0
    for first, end in itertools.chain(_extents(fd, src, length), [(length, length)]):
        for at in range(position, first, CHUNK):
            yield zeros[: min(CHUNK, first - at)]
        for at in range(first, end, CHUNK):
            yield src.io.read_at(at, min(CHUNK, end - at))
        position = end


def _extents(fd: int, drive: Endpoint, length: int) -> Iterator[tuple[int, int]]:
    """Data regions of the drive's first `length` bytes, in drive offsets."""
    for first, end in data_extents(fd, drive.base, drive.base + length):
        yield first - drive.base, end - drive.base


@contextlib.contextmanager
def _seekable(drive: Endpoint) -> Iterator[int]:
    """A descriptor of the drive's file of its own, for SEEK_DATA/SEEK_HOLE."""
    fd = os.open(drive.io.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _direct(src: Endpoint, dst: Endpoint) -> Iterator[DirectCopy | None]:
    """Direct (O_DIRECT) writes into a plain DST that a plain SRC is copied to, None
    otherwise: the data goes from SRC's page cache straight to the disk, which on the disks
    measured here makes it durable several times sooner than the page cache's write-back."""
    fd = open_direct(dst.io.path) if src.plain and dst.plain else None
    if fd is None:
        yield None
        return
    direct = DirectCopy(fd, _fileno(src))
    try:
        yield direct
    finally:
        try:
            direct.close()
        finally:
            # Whatever the close raises: an open descriptor would keep a destroyed DST's
            # blocks allocated (a full disk stayed full after the destroy meant to free it).
            os.close(fd)


def empty(dst: Endpoint) -> None:
    """Make every byte of DST a hole (reading as zeros), keeping its size and LUKS header.

    DST may be read meanwhile (reads are not refused during imaging): punching a hole keeps
    the file's size, so a read under way (sendfile of a promised length) never finds it
    shorter. Only where holes cannot be punched is the file cut and grown again."""
    file_size = os.stat(dst.io.path).st_size
    fd = os.open(dst.io.path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if punch_hole(fd, dst.base, file_size - dst.base):
            return
        os.ftruncate(fd, dst.base)
        os.ftruncate(fd, file_size)
    finally:
        os.close(fd)


def _clone(src: Endpoint, dst: Endpoint, length: int) -> bool:
    """Make DST's first `length` bytes share SRC's blocks (reflink) where the file system
    can, DST keeping its size (a read of it under way is never cut short, as with `empty`);
    the part of a block past the last whole one is copied. False where it cannot."""
    shared = clone_range(_fileno(src), _fileno(dst), length)
    if not shared:
        return False
    if shared < length:
        dst.io.write_at(shared, src.io.read_at(shared, length - shared))
    return True


def _fileno(drive: Endpoint) -> int:
    assert isinstance(drive.io, PlainDriveIO)
    return drive.io.fileno()
