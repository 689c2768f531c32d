"""A drive write held back until it is known to be good, then put on the drive whole.

A gzip body shows whether it is valid, and how long it inflates, only at its very end; writing
it as it streams would leave the drive half-changed when that end turns out bad. Its bytes are
kept aside instead: in memory up to `MEMORY_BOUND`, beyond that in an anonymous staging file
in the drive directory (it has no name, so nothing is left behind when the daemon dies; where
the file system cannot make nameless files, a named one is unlinked at once, and a daemon
killed in between leaves a `*.staging` file that the next start removes).

An encrypted drive's bytes are encrypted with the drive's key before they reach the staging
file, so no plaintext of an encrypted drive is ever written to disk; applying copies those
sectors into the container as they are. A partial first or last sector stays in memory and
goes through the drive (read, merge, re-encrypt) when the stage is applied.
"""

import contextlib
import errno
import os
import secrets
from pathlib import Path

from openhosting.storage.drive_files import IO_CHUNK, EncryptedDriveIO, PlainDriveIO, pwritev_all
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.xts import SECTOR_SIZE

# In memory up to this much per write (the upload tool's chunks are 5 MiB, so those never
# touch a staging file); memory for staging is bounded by this times the transfers at once.
MEMORY_BOUND = 16 * 1024 * 1024
STAGING_SUFFIX = ".staging"
# A plain drive is written this much at a time, each group's write-back to disk started at
# once: the disk works on it while the next is copied, and the fdatasync after finds less
# left (a 5 MiB gzip chunk's write and sync took 3-5 ms instead of 7-18 in alternated trials
# on the loaded machine).
WRITEBACK_PIECE = 1024 * 1024
# Appended pieces smaller than this are copied into one buffer; larger ones are kept as they
# came.
SMALL_PIECE = 64 * 1024


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
        self._pieces: list[bytes | bytearray] = []
        self._held = 0  # their length
        self._fd: int | None = None
        self._head = b""  # encrypted: the bytes before the first sector boundary
        self._in_file = 0  # bytes in the staging file, from drive offset `_file_start`

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

    def _hold(self, rest: bytearray) -> None:
        self._pieces, self._held = ([rest], len(rest)) if rest else ([], 0)

    def spill(self) -> None:
        """Move the held bytes to the staging file (an encrypted drive's as whole sectors
        of ciphertext: a partial last sector stays held)."""
        if self._fd is None:
            self._fd = open_staging_file(self._directory)
            if self._encrypted:
                buffer = self._take_all()
                head = min((-self._offset) % SECTOR_SIZE, len(buffer))
                self._head = bytes(buffer[:head])
                self._hold(buffer[head:])
        if not isinstance(self._io, EncryptedDriveIO):
            count = self._held
            pwritev_all(self._fd, self._pieces, self._in_file)
            self._pieces, self._held = [], 0
        else:
            buffer = self._take_all()
            count = len(buffer) - len(buffer) % SECTOR_SIZE
            piece = buffer[:count]
            self._hold(buffer[count:])
            self._io.encrypt_sectors(piece, (self._file_start + self._in_file) // SECTOR_SIZE)
            pwrite_all(self._fd, piece, self._in_file)
        self._in_file += count

    def apply(self) -> None:
        """Put the staged bytes on the drive and make them durable. The range gets its disk
        blocks first: a full disk refuses the write before it changes a byte."""
        self._io.allocate(self._offset, self.length)
        if self._fd is None:
            self._write_held(self._offset)
        else:
            self.spill()
            _copy_range(self._fd, self._io.fileno(), self._io.payload_offset + self._file_start,
                        self._in_file)  # fmt: skip
            if self._head:
                self._io.write_at(self._offset, self._head)
            self._write_held(self._file_start + self._in_file)
        self._io.sync()
        self.discard()

    def _write_held(self, offset: int) -> None:
        if not isinstance(self._io, PlainDriveIO):
            if self._held:
                self._io.write_at(offset, self._take_all())
            return
        group: list[bytes | bytearray] = []
        grouped = 0
        for piece in self._pieces:
            group.append(piece)
            grouped += len(piece)
            if grouped >= WRITEBACK_PIECE:
                self._io.write_pieces(offset, group)
                self._io.start_writeback(offset, grouped)
                offset += grouped
                group, grouped = [], 0
        self._io.write_pieces(offset, group)

    def discard(self) -> None:
        """Drop whatever is staged (the staging file vanishes with its descriptor)."""
        self._pieces, self._held = [], 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _copy_range(source: int, target: int, target_offset: int, count: int) -> None:
    """Copy `count` bytes from the start of `source` to `target_offset` of `target`, in the
    kernel where it can (copy_file_range), through memory where it cannot."""
    copied = 0
    try:
        while copied < count:
            left, at = count - copied, target_offset + copied
            step = os.copy_file_range(source, target, left, copied, at)
            if step == 0:
                raise OSError(errno.EIO, "the staging file ended early")
            copied += step
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while copied < count:
        data = bytearray(os.pread(source, min(IO_CHUNK, count - copied), copied))
        if not data:
            raise OSError(errno.EIO, "the staging file ended early")
        pwrite_all(target, data, target_offset + copied)
        copied += len(data)
