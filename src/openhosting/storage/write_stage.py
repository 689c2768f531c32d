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

from openhosting.storage.drive_files import IO_CHUNK, EncryptedDriveIO, PlainDriveIO
from openhosting.storage.xts import SECTOR_SIZE

# In memory up to this much per write (the upload tool's chunks are 5 MiB, so those never
# touch a staging file); memory for staging is bounded by this times the transfers at once.
MEMORY_BOUND = 16 * 1024 * 1024
STAGING_SUFFIX = ".staging"


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
    the drive only by `apply`. `append` runs on the event loop (it only copies into memory);
    `spill`, `apply` and `discard` do I/O and run in a worker thread."""

    def __init__(
        self, drive_io: PlainDriveIO | EncryptedDriveIO, directory: Path, offset: int
    ) -> None:
        self._io, self._directory, self._offset = drive_io, directory, offset
        self._encrypted = isinstance(drive_io, EncryptedDriveIO)
        self.length = 0  # bytes staged in all
        self._buffer = bytearray()  # staged bytes not yet in the staging file
        self._fd: int | None = None
        self._head = b""  # encrypted: the bytes before the first sector boundary
        self._in_file = 0  # bytes in the staging file, from drive offset `_file_start`

    @property
    def _file_start(self) -> int:
        return self._offset + len(self._head)

    def append(self, data: bytes | bytearray) -> None:
        self._buffer += data
        self.length += len(data)

    def wants_spill(self) -> bool:
        """Whether the memory held is enough to move to the staging file now."""
        return len(self._buffer) >= (MEMORY_BOUND if self._fd is None else IO_CHUNK)

    def spill(self) -> None:
        """Move the buffered bytes to the staging file (an encrypted drive's as whole
        sectors of ciphertext: a partial last sector stays buffered)."""
        if self._fd is None:
            self._fd = open_staging_file(self._directory)
            if self._encrypted:
                head = min((-self._offset) % SECTOR_SIZE, len(self._buffer))
                self._head, self._buffer = bytes(self._buffer[:head]), self._buffer[head:]
        count = len(self._buffer)
        if self._encrypted:
            count -= count % SECTOR_SIZE
        if not count:
            return
        piece, self._buffer = self._buffer[:count], self._buffer[count:]
        if isinstance(self._io, EncryptedDriveIO):
            self._io.encrypt_sectors(piece, (self._file_start + self._in_file) // SECTOR_SIZE)
        _pwrite_all(self._fd, piece, self._in_file)
        self._in_file += count

    def apply(self) -> None:
        """Put the staged bytes on the drive and make them durable. The range gets its disk
        blocks first: a full disk refuses the write before it changes a byte."""
        self._io.allocate(self._offset, self.length)
        if self._fd is None:
            self._io.write_at(self._offset, self._buffer)
        else:
            self.spill()
            _copy_range(self._fd, self._io.fileno(), self._io.payload_offset + self._file_start,
                        self._in_file)  # fmt: skip
            if self._head:
                self._io.write_at(self._offset, self._head)
            if self._buffer:
                self._io.write_at(self._file_start + self._in_file, self._buffer)
        self._io.sync()
        self.discard()

    def discard(self) -> None:
        """Drop whatever is staged (the staging file vanishes with its descriptor)."""
        self._buffer = bytearray()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pwrite_all(fd: int, data: bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


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
        _pwrite_all(target, data, target_offset + copied)
        copied += len(data)
