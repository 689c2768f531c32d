"""Sparse files: where their data is, and copying only that data.

A drive file is mostly holes; copying it byte for byte would read and write every zero. Here
the data regions come from `SEEK_DATA`/`SEEK_HOLE`, whole files are cloned (reflink) where the
filesystem can, and data is moved by the kernel with `copy_file_range` where it cannot, so a
10 GiB drive holding 100 MiB costs what copying 100 MiB costs.
"""

import ctypes
import errno
import fcntl
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from openhosting.reverter import Reverter

# The FICLONE ioctl (linux/fs.h): make the destination share the source's blocks.
FICLONE = 0x40049409
# Pieces handed to copy_file_range: big enough to keep the kernel busy, small enough that
# progress and a stop request are seen often.
COPY_PIECE = 32 * 1024 * 1024
# sync_file_range(2) flag: start write-back of the range's dirty pages, do not wait for it.
SYNC_FILE_RANGE_WRITE = 2
# fallocate(2) modes (linux/falloc.h): free a range's blocks, keeping the file's size.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# Errors that mean "this filesystem or kernel cannot do that", never "the data is bad".
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS})


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


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _libc_fallocate()


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
