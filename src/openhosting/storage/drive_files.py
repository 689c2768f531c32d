"""Drive files: one raw, sparse file per drive under one directory.

Creating or resizing is a `truncate`, instant at any size; a byte never written costs no disk
and reads as zero. Encrypted drives are LUKS1 containers (see `luks.py`) whose payload is the
drive's bytes.
"""

import asyncio
import contextlib
import errno
import heapq
import logging
import mmap
import os
import stat
import threading
import time
import uuid as uuid_module
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from time import monotonic
from typing import Protocol

from openhosting.storage.directory_watch import DirectoryWatch
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.luks import LuksVolume, format_luks1, payload_offset
from openhosting.storage.sparse import (
    DIRECT_ALIGNMENT,
    data_extents,
    open_direct,
    punch_hole,
    split_zeros,
    start_writeback,
)
from openhosting.storage.xts import SECTOR_SIZE

# Large enough to amortise a system call and an AES pass; small enough to keep memory flat.
IO_CHUNK = 4 * 1024 * 1024
# A plain drive is written this much at a time, each group's write-back to disk started at
# once: the disk works on it while the next is copied, and the fdatasync after finds less
# left (a 5 MiB gzip chunk's write and sync took 3-5 ms instead of 7-18 in alternated trials
# on the loaded machine).
WRITEBACK_PIECE = 1024 * 1024
# Zeros written where the file system cannot punch holes.
_ZEROS = bytes(IO_CHUNK)
# The most pieces one gathered write takes (the kernel's UIO_MAXIOV).
IOV_MAX = os.sysconf("SC_IOV_MAX")
# How long a drive's availability seen on the event loop is kept at most when its directory's
# watch hears nothing: what no watch tells (a file system failing under an unchanged file,
# another mounted over the directory) shows within it.
AVAILABILITY_SECONDS = 1.0
MAX_SEEN = 65536  # drives whose availability is kept; past it all are looked at again

log = logging.getLogger("openhosting.storage")


class DriveIO(Protocol):
    """Random access to one drive's bytes."""

    def read_at(self, offset: int, length: int) -> bytes | bytearray: ...

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


def pwritev_all(fd: int, pieces: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """Write `pieces` one after another from `offset` of `fd`, gathered: no copy."""
    views = [memoryview(piece) for piece in pieces if piece]
    while views:
        written = os.pwritev(fd, views[:IOV_MAX], offset)
        if written == 0:
            raise OSError(errno.EIO, "the file took none of a write")
        offset += written
        while written:  # drop the pieces that went, keep the rest of one written in part
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0], written = views[0][written:], 0


class PlainDriveIO:
    """A plain drive: the file's bytes are the drive's bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    # The drive's bytes start at the file's first byte (an encrypted drive's do not).
    payload_offset = 0

    def fileno(self) -> int:
        return self._fd

    def holds_no_data(self, offset: int, length: int) -> bool:
        """Whether `[offset, offset + length)` was never written (a hole: reads as zeros)."""
        return next(data_extents(self._fd, offset, offset + length), None) is None

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def allocate(self, offset: int, length: int) -> None:
        """Give `[offset, offset + length)` its disk blocks now, without changing a byte: a
        write into it cannot then run out of space half-way (ENOSPC comes from here)."""
        if length > 0:
            os.posix_fallocate(self._fd, offset, length)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def write_keeping_holes(
        self, offset: int, pieces: Sequence[bytes | bytearray | memoryview]
    ) -> None:
        """Write `pieces` one after another from `offset`, their all-zero blocks as holes
        (`write_zeros`): a drive the platform keeps sparse takes no disk for zeros a tenant
        writes, however many. The data goes in gathered writes of `WRITEBACK_PIECE` or more,
        each one's write-back started at once."""
        self.write_runs(split_zeros(pieces, offset))

    def write_runs(self, runs: Iterable[tuple[int, int, list[memoryview]]]) -> None:
        """Write `runs` of `sparse.split_zeros`, as `write_keeping_holes` does."""
        for at, length, views in runs:
            if not views:
                self.write_zeros(at, length)
                continue
            start, first = at, 0  # the group views[first:index], written from `start`
            for index, view in enumerate(views, 1):
                at += len(view)
                if at - start >= WRITEBACK_PIECE or index == len(views):
                    pwritev_all(self._fd, views[first:index], start)
                    if at - start >= WRITEBACK_PIECE:
                        self.start_writeback(start, at - start)
                    start, first = at, index

    def write_zeros(self, offset: int, length: int) -> None:
        """Make `[offset, offset + length)` read as zeros as a hole: what was there is freed,
        nothing new is taken (written as zeros where the file system cannot punch holes)."""
        if length <= 0 or punch_hole(self._fd, offset, length):
            return
        for at in range(offset, offset + length, IO_CHUNK):
            pwrite_all(self._fd, memoryview(_ZEROS)[: min(IO_CHUNK, offset + length - at)], at)

    def start_writeback(self, offset: int, length: int) -> None:
        """Have the kernel start writing `[offset, offset + length)` to disk now (a hint:
        `sync` still waits for it)."""
        start_writeback(self._fd, offset, length)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class EncryptedDriveIO:
    """An encrypted drive: sector-exact access to a LUKS1 container's payload."""

    def __init__(self, path: Path, master_key: bytes, edge_lock: threading.Lock) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._volume = LuksVolume(self._fd, master_key)
        # Writes that start or end inside a sector read, modify and write that sector back;
        # two of them touching one sector must not interleave.
        self._edge_lock = edge_lock
        self._direct_fd: int | None = None  # opened at the first aligned write
        self._direct_refused = False
        # A raw write's pieces are written by two threads at once: both may make the first
        # aligned write, and only one may open the direct descriptor (the other's would be
        # left open, holding the file after its destroy).
        self._direct_open_lock = threading.Lock()

    def fileno(self) -> int:
        return self._fd

    @property
    def payload_offset(self) -> int:
        """Where the drive's bytes start in the file."""
        return self._volume.payload_offset

    def encrypt_sectors(self, buffer: bytearray | memoryview, first_sector: int) -> None:
        """Encrypt whole sectors in place, as the drive's sectors from `first_sector` (of the
        payload) would be stored."""
        self._volume.encrypt_sectors(buffer, first_sector)

    def read_at(self, offset: int, length: int) -> bytes | bytearray:
        return self._volume.read_at(offset, length)

    def read_sectors_into(self, first_sector: int, view: memoryview) -> None:
        """Fill `view` (whole sectors) with the payload's sectors from `first_sector`,
        decrypted in place: a read through a few buffers of its own (never-written sectors
        are zeros)."""
        self._volume.read_sectors_into(first_sector, view)

    def holds_no_data(self, offset: int, length: int) -> bool:
        """Whether `[offset, offset + length)` of the payload was never written."""
        base = self._volume.payload_offset
        return next(data_extents(self._fd, base + offset, base + offset + length), None) is None

    def allocate(self, offset: int, length: int) -> None:
        """Give the sectors holding payload `[offset, offset + length)` their disk blocks
        now, without changing a byte (see `PlainDriveIO.allocate`)."""
        if length > 0:
            first = offset - offset % SECTOR_SIZE
            end = _whole_sectors(offset + length)
            os.posix_fallocate(self._fd, self._volume.payload_offset + first, end - first)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        # No copy here: the volume encrypts into a buffer of its own.
        if offset % SECTOR_SIZE == 0 and len(data) % SECTOR_SIZE == 0:
            if not self._write_direct(offset, memoryview(data)):
                self._volume.write_at(offset, data)
            return
        with self._edge_lock:
            self._volume.write_at(offset, data)

    def _write_direct(self, offset: int, data: memoryview) -> bool:
        """Encrypt page-aligned whole pages into page-aligned memory and write them with
        O_DIRECT, straight to the disk (the ciphertext is a copy anyway, so it costs no
        extra copy; on the disks measured here direct writes are durable three times sooner
        than the page cache's write-back). False where this write or file cannot: the
        caller writes it the usual way."""
        length, position = len(data), self._volume.payload_offset + offset
        if (
            self._direct_refused
            or position % DIRECT_ALIGNMENT
            or length % DIRECT_ALIGNMENT
            or not 0 < length <= _DIRECT_MAX
            or offset + length > self._volume.size
        ):
            return False
        if self._direct_fd is None:
            with self._direct_open_lock:
                if self._direct_fd is None and not self._direct_refused:
                    self._direct_fd = open_direct(self.path)
                    self._direct_refused = self._direct_fd is None
            if self._direct_fd is None:
                return False
        with memoryview(_aligned_buffer(length))[:length] as buffer:
            buffer[:] = data.cast("B")
            self._volume.encrypt_sectors(buffer, offset // SECTOR_SIZE)
            try:
                done = 0
                while done < length:
                    done += os.pwrite(self._direct_fd, buffer[done:], position + done)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self._direct_refused = True  # opened, yet refused: the page cache instead
                return False
        return True

    def start_writeback(self, offset: int, length: int) -> None:
        """Have the kernel start writing the sectors of payload `[offset, offset + length)`
        to disk now (a hint: `sync` still waits for it)."""
        start_writeback(self._fd, self._volume.payload_offset + offset, length + SECTOR_SIZE)

    def resize(self, size: int) -> None:
        """Resize the payload to hold `size` bytes; bytes past `size` in the last sector are
        zeroed, so that growing the drive again never shows what a shrink cut off."""
        self._volume.resize(_whole_sectors(size))
        tail = _whole_sectors(size) - size
        if tail:
            self._volume.write_at(size, bytes(tail))

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
        os.close(self._fd)


# Direct writes up to this size go through each thread's page-aligned buffer (the largest
# piece written is imaging's 8 MiB); larger ones take the page cache.
_DIRECT_MAX = 8 * 1024 * 1024
_thread_buffers = threading.local()


def _aligned_buffer(length: int) -> mmap.mmap:
    """This thread's page-aligned buffer (anonymous maps are), at least `length` bytes."""
    buffer: mmap.mmap | None = getattr(_thread_buffers, "buffer", None)
    if buffer is None or len(buffer) < length:
        buffer = mmap.mmap(-1, max(length, IO_CHUNK))
        _thread_buffers.buffer = buffer
    return buffer


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid_module.UUID(text)) == text
    except ValueError:
        return False


def _whole_sectors(size: int) -> int:
    """A LUKS payload holds whole sectors: `size` rounded up to one."""
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def file_is_available(path: str | Path) -> bool:
    """Whether the drive file at `path` opens for reading as a regular file: False when it
    is missing, replaced by something else, or its file system answers with an error (gone,
    failing, unmounted under it). One open and close: cheap enough for every info."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


class DriveFiles:
    """The directory of drive files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = str(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._edge_locks: dict[str, threading.Lock] = {}
        # Availability kept by drive while the directory's watch hears nothing (an info's
        # open, fstat and close cost a third of a cached drives/D/info): the watch's count
        # when looked at, until when it may be kept, and what was seen.
        self._watch: DirectoryWatch | None = None
        self._watch_tried = False
        self._seen: dict[str, tuple[int, float, bool]] = {}

    def path_of(self, uuid: str) -> Path:
        return self.root / f"{uuid}.img"

    def is_available(self, uuid: str) -> bool:
        """Whether the drive's data can be reached now (its status `active`). On the event
        loop what was seen is kept while nothing happens to the directory's entries (its
        watch, storage/directory_watch.py), for AVAILABILITY_SECONDS at most: a file system
        failing under an unchanged file tells no watch."""
        watch = self._watch if self._watch_tried else self._start_watch()
        # (`watch.live` spelt out: a property's call is a tenth of a kept info's cost.)
        if watch is None or watch.lost or asyncio._get_running_loop() is not watch.loop:
            if watch is not None and (watch.lost or watch.loop.is_closed()):
                watch.close()
                self._watch_tried = False  # a new watch at the next look from a loop
            return self._look(uuid)
        heard, now = watch.heard, monotonic()
        seen = self._seen.get(uuid)
        if seen is not None and seen[0] == heard and now < seen[1]:
            return seen[2]
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        available = self._look(uuid)  # `heard` read before: an event meanwhile voids it
        self._seen[uuid] = (heard, now + AVAILABILITY_SECONDS, available)
        return available

    def _look(self, uuid: str) -> bool:
        # The path as text: a Path made per drive is a third of this check's cost, and an
        # info of thousands makes one per drive.
        return file_is_available(f"{self._root_text}/{uuid}.img")

    def _start_watch(self) -> DirectoryWatch | None:
        """The directory's watch, started on the first look from an event loop, and again
        after one was lost (None elsewhere, or when inotify refuses: every look is then made
        afresh)."""
        if asyncio._get_running_loop() is None:
            return None
        self._watch_tried = True
        self._watch = None
        self._seen.clear()  # counted by another watch
        try:
            self._watch = DirectoryWatch(self.root)
        except OSError as error:
            log.warning("event=directory_watch_failed directory=%s error=%r", self.root, error)
        return self._watch

    def watch(self) -> None:
        """Start the directory's watch now, from the running event loop, rather than at the
        first look: its descriptor is then held from the start (a daemon's count of open
        descriptors does not grow by it under load)."""
        if not self._watch_tried:
            self._start_watch()

    def close(self) -> None:
        """Stop watching the directory (its files stay as they are)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def create_plain(self, uuid: str, size: int) -> None:
        fd = os.open(self.path_of(uuid), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            self.destroy(uuid)
            raise
        os.close(fd)

    def create_encrypted(self, uuid: str, size: int, passphrase: bytes) -> bytes:
        """Create a LUKS1 container with `size` payload bytes; returns its master key."""
        # format_luks1 removes its own partial file on failure, and never touches a file
        # that was already there.
        return format_luks1(self.path_of(uuid), passphrase, _whole_sectors(size))

    def resize(self, uuid: str, size: int, master_key: bytes | None, kept: int) -> None:
        """Make the drive `size` bytes long, of which only the first `kept` keep their data:
        the file is cut to `kept` first, so that growing never shows bytes a shrink meant
        to cut (one the daemon did not finish, say) and a shrink is one truncate."""
        kept = min(kept, size)
        if master_key is None:
            path = self.path_of(uuid)
            os.truncate(path, kept)
            if size != kept:
                os.truncate(path, size)
            return
        with self.open(uuid, master_key) as drive_io:
            assert isinstance(drive_io, EncryptedDriveIO)
            drive_io.resize(kept)
            if size != kept:
                drive_io.resize(size)

    def unchanged_since(self, moment: float) -> list[str]:
        """The UUIDs of the drive files not modified since `moment` (a time)."""
        found = []
        for path in self.root.glob("*.img"):
            with contextlib.suppress(FileNotFoundError):
                if _is_uuid(path.stem) and path.stat().st_mtime < moment:
                    found.append(path.stem)
        return found

    def listing(self, after: str, limit: int) -> list[tuple[str, int, float]]:
        """The first `limit` drive files whose UUID sorts after `after`, in UUID order: (UUID,
        size, seconds since last modified). The directory is streamed: a page holds `limit`
        entries at most, however many files there are."""
        now = time.time()

        def entries() -> Iterator[tuple[str, int, float]]:
            with os.scandir(self.root) as scan:
                for entry in scan:
                    uuid, dot, suffix = entry.name.partition(".")
                    if dot and suffix == "img" and uuid > after and _is_uuid(uuid):
                        with contextlib.suppress(FileNotFoundError):
                            found = entry.stat(follow_symlinks=False)
                            yield uuid, found.st_size, now - found.st_mtime

        return heapq.nsmallest(limit, entries())

    def destroy_if_unchanged(self, uuid: str, age: float) -> bool:
        """Remove the drive's file if it was not modified in the last `age` seconds (looked
        at again here: a file being made or written right now is kept). Whether it was."""
        path = self.path_of(uuid)
        try:
            if time.time() - path.stat().st_mtime < age:
                return False
        except FileNotFoundError:
            return False
        self.destroy(uuid)
        return True

    def holds_size(self, uuid: str, size: int, encrypted: bool) -> bool:
        """Whether the drive's file is exactly what a drive of `size` bytes takes (checked
        without a key: an encrypted drive's header says where its payload starts)."""
        path = self.path_of(uuid)
        if not encrypted:
            return path.stat().st_size == size
        return path.stat().st_size == payload_offset(path) + _whole_sectors(size)

    def destroy(self, uuid: str) -> None:
        self._edge_locks.pop(uuid, None)
        with contextlib.suppress(FileNotFoundError):
            self.path_of(uuid).unlink()

    def open(self, uuid: str, master_key: bytes | None) -> "OpenDrive":
        """Open a drive for I/O: plain when `master_key` is None, else encrypted."""
        path = self.path_of(uuid)
        if master_key is None:
            return OpenDrive(PlainDriveIO(path))
        lock = self._edge_locks.setdefault(uuid, threading.Lock())
        return OpenDrive(EncryptedDriveIO(path, master_key, lock))

    def allocated_bytes(self, uuid: str) -> int:
        return self.path_of(uuid).stat().st_blocks * 512


class OpenDrive:
    """A context manager that closes a DriveIO."""

    def __init__(self, drive_io: PlainDriveIO | EncryptedDriveIO) -> None:
        self.io = drive_io

    def __enter__(self) -> PlainDriveIO | EncryptedDriveIO:
        return self.io

    def __exit__(self, *exc: object) -> None:
        self.io.close()


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def is_too_large(error: OSError) -> bool:
    return error.errno in (errno.EFBIG, errno.EINVAL)
