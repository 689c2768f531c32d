"""Sparse files: where their data is, and copying only that data.

A drive file is mostly holes; copying it byte for byte would read and write every zero. Here
the data regions come from `SEEK_DATA`/`SEEK_HOLE`, whole files are cloned (reflink) where the
filesystem can, and data is moved by the kernel with `copy_file_range` where it cannot, so a
10 GiB drive holding 100 MiB costs what copying 100 MiB costs. A copy that must be durable
at its end can write its aligned part with O_DIRECT instead (`DirectCopy`), straight from a
read-only map of the source: on the virtual disks measured here that is several times the
page cache's write-back (100 MiB durable in 65 ms instead of 250-350).
"""

import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from openhosting.reverter import Reverter
from openhosting.storage.file_writes import pwrite_all

# The FICLONE and FICLONERANGE ioctls (linux/fs.h): make the destination share the source's
# blocks, all of them or a range (struct file_clone_range: src_fd, src_offset, src_length,
# dest_offset).
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
_CLONE_RANGE = struct.Struct("=qQQQ")
# Pieces handed to copy_file_range: big enough to keep the kernel busy, small enough that
# progress and a stop request are seen often.
COPY_PIECE = 32 * 1024 * 1024
# What O_DIRECT needs of offsets, lengths and buffer addresses: the largest logical block size
# in use (4 KiB disks), which also covers 512-byte ones.
DIRECT_ALIGNMENT = 4096
# Pieces of a direct copy, and how many are written at once: on the virtual disk here two
# 4 MiB writes at a time put 100 MiB of a cached source on the disk in ~65 ms, against
# ~105 ms one at a time and ~160 ms read into a buffer of ours first (more at once gained
# nothing).
DIRECT_PIECE = 4 * 1024 * 1024
DIRECT_WRITERS = 2
# sync_file_range(2) flag: start write-back of the range's dirty pages, do not wait for it.
SYNC_FILE_RANGE_WRITE = 2
# fallocate(2) modes (linux/falloc.h): free a range's blocks, keeping the file's size.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# Zeros written to a plain file stay holes in blocks this big, aligned in the file (a multiple
# of every file system's block, so a block skipped is a hole there too).
ZERO_BLOCK = 64 * 1024
# Errors that mean "this filesystem or kernel cannot do that", never "the data is bad".
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS})
# The file systems (st_dev) that took a direct copy's first page: later copies onto them go
# to the pool at once, without that page's round trip to the disk alone first (0.4-3 ms of
# every copy; the daemon's drives are all on one or two file systems).
_DIRECT_PROVEN: set[int] = set()


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The `(first, past_last)` byte ranges of data of the file `fd` within `[start, end)`.

    Everything outside them reads as zeros. A filesystem without SEEK_DATA reports the whole
    file as data, which is still correct, only slower to copy.
    """
    position = start
    while position < end:
        try:
            first = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data after `position`
                return
            raise
        if first >= end:
            return
        past_last = min(os.lseek(fd, first, os.SEEK_HOLE), end)
        yield first, past_last
        position = past_last


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """Whether every byte of `data` is zero."""
    values = np.frombuffer(data, dtype=np.uint8)
    # A piece of data rarely starts with 64 zero bytes: its head settles it without a scan
    # of the whole (a twelfth of the cost of 512 KiB pieces; ~60 ms of CPU per GiB). The
    # scan ORs 8-byte words: 35-55 GB/s where any() of the bytes does 4 (a gunzip's zero
    # runs, a quarter of bench's image, cost 60 ms of CPU per GiB that way).
    whole = len(values) // 8 * 8
    return (
        not values[:64].any()
        and not np.bitwise_or.reduce(values[:whole].view(np.uint64))
        and not values[whole:].any()
    )


def _has_data(part: memoryview) -> bool:
    # Data rarely starts or ends with a zero byte: those settle most parts without a scan.
    return bool(part[0] or part[-1]) or not is_zero(part)


def data_runs(
    pieces: Sequence[bytes | bytearray | memoryview], position: int
) -> Iterator[tuple[int, int]]:
    """The `(first, past_last)` file ranges holding data when `pieces` are written one after
    another from `position`: whole `ZERO_BLOCK`s of the file (cut at the pieces' ends) with
    a byte other than zero, a block cut by two pieces looked at in both. The rest is zeros,
    which a file keeps as holes. A vectorised pass per piece: 5 MiB of data in 21 pieces
    at odd offsets (a gzip chunk's, as inflated) take ~0.1 ms."""
    end = position + sum(len(piece) for piece in pieces)
    if end == position:
        return
    first_block = position // ZERO_BLOCK
    has_data = np.zeros(-(-end // ZERO_BLOCK) - first_block, bool)
    at = position
    for piece in pieces:
        length = len(piece)
        view = memoryview(piece)
        index = at // ZERO_BLOCK - first_block
        head = min(-at % ZERO_BLOCK, length)
        whole = (length - head) // ZERO_BLOCK
        tail = head + whole * ZERO_BLOCK
        if head:  # the end of a block the piece before may have begun
            has_data[index] |= _has_data(view[:head])
            index += 1
        if whole:
            words = np.frombuffer(view, np.uint64, whole * ZERO_BLOCK // 8, head)
            words = words.reshape(whole, ZERO_BLOCK // 8)
            # A block of data rarely starts with a zero word: the first words settle most
            # blocks of data (6 us for 5 MiB, against 100 for the OR of all their words).
            blocks = words[:, 0] != 0
            if not blocks.all():
                blocks = np.bitwise_or.reduce(words, axis=1) != 0
            has_data[index : index + whole] |= blocks
            index += whole
        if tail < length:  # the start of a block the next piece may end
            has_data[index] |= _has_data(view[tail:])
        at += length
    edges = np.flatnonzero(np.diff(has_data, prepend=False, append=False))
    for first, past in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        block = first_block * ZERO_BLOCK
        yield max(block + first * ZERO_BLOCK, position), min(block + past * ZERO_BLOCK, end)


def split_zeros(
    pieces: Sequence[bytes | bytearray | memoryview], position: int
) -> Iterator[tuple[int, int, list[memoryview]]]:
    """`pieces`, written one after another from `position`, as runs in order: `(at, length,
    views)`, `views` the pieces' parts that make a run of data (see `data_runs`), empty
    for a run of zeros."""
    views = [memoryview(piece) for piece in pieces if piece]
    index, start = 0, position  # views[index] is written from `start`
    done = position
    end = position + sum(len(view) for view in views)
    for first, past in itertools.chain(data_runs(views, position), [(end, end)]):
        if first > done:
            yield done, first - done, []
        run: list[memoryview] = []
        while index < len(views) and start < past:
            view = views[index]
            if start + len(view) <= first:  # all of it before the run (zeros)
                index, start = index + 1, start + len(view)
                continue
            run.append(view[max(first - start, 0) : past - start])
            if start + len(view) > past:
                break  # the rest of this piece starts the next run
            index, start = index + 1, start + len(view)
        if run:
            yield first, past - first, run
        done = past


def _libc_function(name: str, argtypes: list[Any]) -> Callable[[int, int, int, int], int] | None:
    """The C library's function `name` of four arguments of `argtypes`, returning an int (-1
    and errno on failure); None where the C library has no such function."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
_fallocate = _libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Make `length` bytes from `offset` a hole (reading as zeros) without changing the file's
    size; False where the file system cannot. Unlike cutting the file and growing it again,
    a reader never sees the file shorter than it is."""
    if _fallocate is None:
        return False
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range's dirty pages to disk now, without waiting.

    A copy that ends with fdatasync then overlaps the disk writes with its own work instead
    of doing them all at the end. Only a hint: where unsupported, nothing happens.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def clone_file(source_fd: int, target_fd: int) -> bool:
    """Make `target_fd` share every block of `source_fd` (reflink); False where unsupported.

    The target takes the source's contents and size; blocks are copied only when one side is
    written later.
    """
    try:
        fcntl.ioctl(target_fd, FICLONE, source_fd)
    except OSError as error:
        if error.errno in _UNSUPPORTED:
            return False
        raise
    return True


def clone_range(source_fd: int, target_fd: int, length: int) -> int:
    """Make the first `length` bytes of `target_fd` share the blocks of `source_fd`'s
    (reflink), without changing the target's size; returns how many bytes were shared (0
    where unsupported): all `length` where they end both files, else their whole blocks,
    the caller copying the rest.

    A range may end within a block only where it ends both files (XFS refuses it
    otherwise): between files of another size only whole blocks are cloned."""
    target = os.fstat(target_fd)
    whole = length == target.st_size == os.fstat(source_fd).st_size
    aligned = length if whole else length - length % target.st_blksize
    if aligned <= 0:
        return 0
    try:
        fcntl.ioctl(target_fd, FICLONERANGE, _CLONE_RANGE.pack(source_fd, 0, aligned, 0))
    except OSError as error:
        if error.errno in _UNSUPPORTED:
            return 0
        raise
    return aligned


def copy_range(
    source_fd: int,
    target_fd: int,
    first: int,
    past_last: int,
    advance: Callable[[int], None],
    source_base: int = 0,
    target_base: int = 0,
) -> int:
    """Copy bytes `[first, past_last)` in the kernel; returns where it stopped.

    `advance(n)` is called after each piece. Returns `past_last` when done, or an earlier
    offset when `copy_file_range` cannot copy between these files (the caller copies the rest
    another way). A source shorter than `past_last` reads as zeros past its end.
    """
    position = first
    while position < past_last:
        length = min(COPY_PIECE, past_last - position)
        try:
            copied = os.copy_file_range(
                source_fd, target_fd, length, source_base + position, target_base + position
            )
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                return position
            raise
        if copied == 0:  # the source ends here: the rest stays a hole, which reads as zeros
            return past_last
        start_writeback(target_fd, target_base + position, copied)
        position += copied
        advance(copied)
    return position


def open_direct(path: Path) -> int | None:
    """A write-only O_DIRECT descriptor of `path`, or None where the file system refuses it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in _UNSUPPORTED:
            return None
        raise


class DirectCopy:
    """Copies ranges of the file `source_fd` to the O_DIRECT descriptor `direct_fd`, at the
    same offsets, straight to the disk. The source is mapped read-only and each piece of the
    map is handed to pwrite as it is, so the kernel writes from the source's page cache and
    no byte passes through a buffer of ours; `DIRECT_WRITERS` pieces are written at once, by
    threads of their own, across ranges too, until `wait`. The caller still makes the target
    durable after `wait` (fdatasync): O_DIRECT skips the page cache, not the disk's own
    cache. A source cut shorter under the map fails a write with EFAULT, never a signal: the
    kernel, not this process, touches the mapped pages."""

    def __init__(self, direct_fd: int, source_fd: int) -> None:
        self._fd = direct_fd
        self._source_fd = source_fd
        self._map: mmap.mmap | None = None  # the source, mapped at the first range
        self._view: memoryview | None = None
        self._pool = ThreadPoolExecutor(DIRECT_WRITERS, thread_name_prefix="direct-copy")
        # Writes under way, oldest first: each with its piece of the map, where it starts,
        # and the callback that hears of it once written.
        self._pending: collections.deque[
            tuple[Future[None], memoryview, int, Callable[[int], None]]
        ] = collections.deque()
        self._device = os.fstat(direct_fd).st_dev
        self._proven = self._device in _DIRECT_PROVEN
        self._refused = False

    def copy_range(self, first: int, past_last: int, advance: Callable[[int], None]) -> int:
        """Start copying the aligned part of `[first, past_last)`; returns where it stops:
        the end of the aligned part, or `first` when nothing can go direct (an unaligned
        start, a source that cannot be mapped or ends before, or a file system that opens
        O_DIRECT but refuses the first direct write). `advance(n)` hears of each piece once
        it is written, in this thread (here or in a later call)."""
        stop = past_last - past_last % DIRECT_ALIGNMENT
        if self._refused or first % DIRECT_ALIGNMENT or stop <= first:
            return first
        source = self._mapped()
        if source is None or len(source) < stop:
            return first
        position = first
        while position < stop:
            if not self._proven:
                # One page proves the file system takes direct writes (once per file system):
                # a whole piece written alone here held the second writer idle for its ~2 ms.
                length = DIRECT_ALIGNMENT
                if not self._first_write(source[position : position + length], position, advance):
                    return first
                position += length
                continue
            # Room first, then the slice: an error or a stop heard while collecting (the
            # caller's `advance` raising) would leave a slice of the map that no list holds
            # alive in the traceback, and close() would fail to close the map (BufferError).
            while len(self._pending) >= DIRECT_WRITERS:
                self._collect()
            length = min(DIRECT_PIECE, stop - position)
            piece = source[position : position + length]
            future = self._pool.submit(pwrite_all, self._fd, piece, position)
            self._pending.append((future, piece, position, advance))
            position += length
        return stop

    def _first_write(
        self, piece: memoryview, position: int, advance: Callable[[int], None]
    ) -> bool:
        """Write the first page here: a refusal (EINVAL) must reach the caller as "copy this
        the other way", not as a failure of some later piece. False if refused."""
        length = len(piece)
        try:
            pwrite_all(self._fd, piece, position)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self._refused = True
            return False
        finally:
            piece.release()
        self._proven = True
        _DIRECT_PROVEN.add(self._device)
        self._unmap(position, length)
        advance(length)
        return True

    def _mapped(self) -> memoryview | None:
        """The source's bytes as mapped at the first range, or None if it cannot be."""
        if self._view is None:
            size = os.fstat(self._source_fd).st_size
            try:
                self._map = mmap.mmap(self._source_fd, size, prot=mmap.PROT_READ)
            except (OSError, ValueError):  # an empty file, or a file system without mmap
                self._refused = True
                return None
            self._view = memoryview(self._map)
        return self._view

    def _collect(self) -> None:
        """Wait for the oldest write (its error is raised here) and report it."""
        future, piece, position, advance = self._pending.popleft()
        length = len(piece)
        try:
            future.result()
        finally:
            piece.release()
        self._unmap(position, length)
        advance(length)

    def _unmap(self, position: int, length: int) -> None:
        """Let go of a written piece's pages: the write mapped them into this process, and
        held until the end they would count in its RSS (the whole copy's size) and be
        harder for the kernel to reclaim. They stay in the page cache."""
        assert self._map is not None
        self._map.madvise(mmap.MADV_DONTNEED, position, length)

    def wait(self) -> None:
        """Wait for every write under way (the first error is raised here)."""
        while self._pending:
            self._collect()

    def close(self) -> None:
        """Let the writes under way end (their pieces must not be unmapped under them), then
        let go of the map and the threads."""
        for future, piece, _, _ in self._pending:
            with contextlib.suppress(OSError):  # only after a failure: that one is raised
                future.result()
            piece.release()
        self._pending.clear()
        self._pool.shutdown(wait=True)
        if self._view is not None:
            self._view.release()
        if self._map is not None:
            self._map.close()


def copy_file_sparse(source: Path, target: Path) -> int:
    """Copy the file `source` to the new file `target` (0600), holes kept; returns its size.

    The copy is durable (fsynced) when this returns; a failed copy leaves no target behind.
    """
    source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(source_fd).st_size
        target_fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with Reverter() as revert:
            revert.add(functools.partial(target.unlink, missing_ok=True))
            try:
                if not clone_file(source_fd, target_fd):
                    os.ftruncate(target_fd, size)
                    for first, past_last in data_extents(source_fd, 0, size):
                        done = copy_range(source_fd, target_fd, first, past_last, lambda _n: None)
                        _copy_through_memory(source_fd, target_fd, done, past_last)
                os.fsync(target_fd)
            finally:
                os.close(target_fd)
            revert.success()
    finally:
        os.close(source_fd)
    return size


def _copy_through_memory(source_fd: int, target_fd: int, first: int, past_last: int) -> None:
    """The slow way, for files `copy_file_range` cannot join."""
    position = first
    while position < past_last:
        data = os.pread(source_fd, min(COPY_PIECE, past_last - position), position)
        if not data:
            return
        view = memoryview(data)
        while view:
            written = os.pwrite(target_fd, view, position)
            view, position = view[written:], position + written
