"""A drive write held back until it is known to be good, then put on the drive whole.

A gzip body shows whether it is valid, and how long it inflates, only at its very end; writing
it as it streams would leave the drive half-changed when that end turns out bad. Its bytes are
kept aside instead: in memory up to `MEMORY_BOUND`, beyond that in an anonymous staging file
in the drive directory (it has no name, so nothing is left behind when the daemon dies; where
the file system cannot make nameless files, a named one is unlinked at once, and a daemon
killed in between leaves a `*.staging` file that the next start removes).

Zeros take no disk, staged or applied: a few megabytes of gzip inflate to gigabytes of zeros,
and a drive is kept sparse. An all-zero block (`sparse.ZERO_BLOCK`, aligned in the drive's
file) is not written to the staging file, where it stays a hole, and applying makes it a
hole of a plain drive (punched: it reads as zeros, and frees the blocks of what was there).
An encrypted drive's zeros are real ciphertext on the drive (a hole of its container is not
zeros to QEMU), encrypted as they are applied; only their staging costs nothing.

An encrypted drive's other bytes are encrypted with the drive's key before they reach the
staging file, so no plaintext of an encrypted drive is ever written to disk; applying copies
those sectors into the container as they are. A partial first or last sector stays in memory
and goes through the drive (read, merge, re-encrypt) when the stage is applied.
"""

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from openhosting.storage.drive_files import IO_CHUNK, EncryptedDriveIO, PlainDriveIO, pwritev_all
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.sparse import ZERO_BLOCK, data_extents, split_zeros
from openhosting.storage.xts import SECTOR_SIZE

# In memory up to this much per write (the upload tool's chunks are 5 MiB, so those never
# touch a staging file); memory for staging is bounded by this times the transfers at once.
MEMORY_BOUND = 16 * 1024 * 1024
STAGING_SUFFIX = ".staging"
# Appended pieces smaller than this are copied into one buffer; larger ones are kept as they
# came.
SMALL_PIECE = 64 * 1024
# The plaintext of an encrypted drive's zeros, encrypted as they are applied.
_ZEROS = bytes(IO_CHUNK)


def open_staging_file(directory: Path) -> int:
    """A new, empty file in `directory` that has no name: it vanishes when closed."""
    with contextlib.suppress(OSError):
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    path = directory / f"{secrets.token_hex(16)}{STAGING_SUFFIX}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    path.unlink()
    return fd


def remove_staging_leftovers(directory: Path) -> int:
    """Remove the named staging files a killed daemon left in `directory` (at start, when no
    write is under way); returns how many."""
    removed = 0
    for path in directory.glob(f"*{STAGING_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _keeps_holes(fd: int) -> bool:
    """Whether the empty file `fd` tells its holes (SEEK_DATA): where it does not, every byte
    reads as data, and zeros skipped there would be copied as they lie (an encrypted drive
    would then get zero ciphertext, not encrypted zeros)."""
    os.ftruncate(fd, ZERO_BLOCK)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as error:
        return error.errno == errno.ENXIO  # no data in a file of one hole
    finally:
        os.ftruncate(fd, 0)
    return False


class WriteStage:
    """The bytes of one write from `offset` of an open drive, appended in order, applied to
    the drive only by `apply`. Used from one thread at a time (a write's worker thread)."""

    def __init__(
        self, drive_io: PlainDriveIO | EncryptedDriveIO, directory: Path, offset: int
    ) -> None:
        self._io, self._directory, self._offset = drive_io, directory, offset
        self._encrypted = isinstance(drive_io, EncryptedDriveIO)
        self.length = 0  # bytes staged in all
        # Staged bytes not yet in the staging file, as they were appended: kept, not copied
        # into one buffer (that copy took ~0.7 ms of a 5 MiB gzip chunk's ~22).
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._held = 0  # their length
        self._fd: int | None = None
        self._skips_zeros = True  # zero blocks are left out of the staging file
        self._head = b""  # encrypted: the bytes before the first sector boundary
        self._in_file = 0  # bytes in the staging file's range, from drive offset `_file_start`
        # Where drive offset `_file_start` is in the staging file: the staging file keeps the
        # drive file's offsets modulo ZERO_BLOCK, so a zero block left out is a whole hole of
        # its file system's blocks, never part of a block that holds data.
        self._lead = 0

    @property
    def _file_start(self) -> int:
        return self._offset + len(self._head)

    def append(self, data: bytes) -> None:
        """Stage `data`, kept as it is (nobody may change it afterwards) unless it is small:
        a body that trickles in tiny pieces is copied together, not held as millions of
        objects."""
        if len(data) >= SMALL_PIECE:
            self._pieces.append(data)
        elif self._pieces and isinstance(self._pieces[-1], bytearray):
            self._pieces[-1] += data  # a buffer of ours
        else:
            self._pieces.append(bytearray(data))
        self._held += len(data)
        self.length += len(data)

    def wants_spill(self) -> bool:
        """Whether the memory held is enough to move to the staging file now."""
        return self._held >= (MEMORY_BOUND if self._fd is None else IO_CHUNK)

    def _take_all(self) -> bytearray:
        """The held bytes in one buffer of their own (encryption works in place)."""
        buffer = bytearray().join(self._pieces)
        self._pieces, self._held = [], 0
        return buffer

    def _take(self, count: int) -> list[bytes | bytearray | memoryview]:
        """The first `count` held bytes, as they are held (a piece cut in two if need be)."""
        taken: list[bytes | bytearray | memoryview] = []
        left = count
        while left:
            piece = self._pieces[0]
            if len(piece) <= left:
                taken.append(self._pieces.pop(0))
                left -= len(piece)
            else:
                view = memoryview(piece)
                taken.append(view[:left])
                self._pieces[0] = view[left:]
                left = 0
        self._held -= count
        return taken

    def _hold(self, rest: bytearray) -> None:
        self._pieces, self._held = ([rest], len(rest)) if rest else ([], 0)

    def spill(self) -> None:
        """Move the held bytes to the staging file, up to the last ZERO_BLOCK boundary of the
        drive's file that they reach (the rest stays held): its zero blocks are left out (an
        encrypted drive's others go as ciphertext, whole sectors)."""
        if self._fd is None:
            self._fd = open_staging_file(self._directory)
            self._skips_zeros = _keeps_holes(self._fd)
            if self._encrypted:
                buffer = self._take_all()
                head = min((-self._offset) % SECTOR_SIZE, len(buffer))
                self._head = bytes(buffer[:head])
                self._hold(buffer[head:])
            self._lead = (self._io.payload_offset + self._file_start) % ZERO_BLOCK
        start = self._io.payload_offset + self._file_start + self._in_file  # in the drive's file
        count = max((start + self._held) // ZERO_BLOCK * ZERO_BLOCK - start, 0)
        if not count:
            return
        if isinstance(self._io, EncryptedDriveIO):
            buffer = self._take_all()
            self._hold(buffer[count:])
            spilled: list[bytes | bytearray | memoryview] = [memoryview(buffer)[:count]]
        else:
            spilled = self._take(count)
        whole = [(start, count, [memoryview(piece) for piece in spilled])]
        runs = split_zeros(spilled, start) if self._skips_zeros else whole
        for at, _, views in runs:
            position = at - start + self._lead + self._in_file  # in the staging file
            if not views:
                continue  # zeros: a hole of the staging file
            if isinstance(self._io, EncryptedDriveIO):
                (view,) = views  # one buffer, one run
                self._io.encrypt_sectors(view, (at - self._io.payload_offset) // SECTOR_SIZE)
                pwrite_all(self._fd, view, position)
            else:
                pwritev_all(self._fd, views, position)
        self._in_file += count

    def apply(self) -> None:
        """Put the staged bytes on the drive and make them durable. The range's data gets
        its disk blocks first: a full disk refuses the write before it changes a byte."""
        if self._fd is not None:
            self.spill()
        held_at = self._file_start + self._in_file if self._fd is not None else self._offset
        held_runs: list[tuple[int, int, list[memoryview]]] = []
        if isinstance(self._io, EncryptedDriveIO):
            self._io.allocate(self._offset, self.length)  # zeros too: real ciphertext
        else:
            held_runs = list(split_zeros(self._pieces, held_at))
            for first, past in self._staged_data():
                self._io.allocate(first, past - first)
            for at, length, views in held_runs:
                if views:
                    self._io.allocate(at, length)
        if self._fd is not None:
            self._apply_file()
            if self._head:
                self._io.write_at(self._offset, self._head)
        if isinstance(self._io, PlainDriveIO):
            self._io.write_runs(held_runs)
        elif self._held:
            self._io.write_at(held_at, self._take_all())
        self._io.sync()
        self.discard()

    def _staged_data(self) -> Iterator[tuple[int, int]]:
        """The drive's ranges that the staging file holds data for; the rest of its range
        is zeros."""
        if self._fd is None:
            return
        shift = self._file_start - self._lead  # staging offset + shift = drive offset
        for first, past in data_extents(self._fd, self._lead, self._lead + self._in_file):
            yield first + shift, past + shift

    def _apply_file(self) -> None:
        """Put the staging file's range on the drive: its data copied as it is, its holes as
        zeros."""
        assert self._fd is not None
        shift = self._file_start - self._lead
        done = self._file_start
        for first, past in self._staged_data():
            self._write_zeros(done, first - done)
            _copy_range(self._fd, first - shift, self._io.fileno(),
                        self._io.payload_offset + first, past - first)  # fmt: skip
            done = past
        self._write_zeros(done, self._file_start + self._in_file - done)

    def _write_zeros(self, offset: int, length: int) -> None:
        if isinstance(self._io, PlainDriveIO):
            self._io.write_zeros(offset, length)
            return
        for at in range(offset, offset + length, IO_CHUNK):
            self._io.write_at(at, memoryview(_ZEROS)[: min(IO_CHUNK, offset + length - at)])

    def discard(self) -> None:
        """Drop whatever is staged (the staging file vanishes with its descriptor)."""
        self._pieces, self._held = [], 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _copy_range(
    source: int, source_offset: int, target: int, target_offset: int, count: int
) -> None:
    """Copy `count` bytes from `source_offset` of `source` to `target_offset` of `target`, in
    the kernel where it can (copy_file_range), through memory where it cannot."""
    copied = 0
    try:
        while copied < count:
            left = count - copied
            step = os.copy_file_range(
                source, target, left, source_offset + copied, target_offset + copied
            )
            if step == 0:
                raise OSError(errno.EIO, "the staging file ended early")
            copied += step
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while copied < count:
        data = bytearray(os.pread(source, min(IO_CHUNK, count - copied), source_offset + copied))
        if not data:
            raise OSError(errno.EIO, "the staging file ended early")
        pwrite_all(target, data, target_offset + copied)
        copied += len(data)
