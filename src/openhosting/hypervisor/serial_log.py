"""A VM's serial log with a hard size bound: `serial.log`, rotated to `serial.log.1`, ….

A guest may print to its serial port as fast as it likes, for as long as it likes; the log
must never hold more than `files` x `file_bytes` bytes. `RotatingLog` fills `serial.log` to
exactly `file_bytes`, then renames it to `serial.log.1` (the older ones move up by one, the
oldest falls off) and starts a new one, so the last output is always kept. It appends to what
a previous daemon left, so a restart keeps the history and the bound.

The run directory belongs to QEMU's unprivileged user (`hypervisor.run_as`), so a compromised
QEMU could plant a symlink, a FIFO or a hard link where a log file goes: the daemon, as root,
opens log files only when they are regular files with one link, never through a symlink;
anything else is removed (for writing) or ignored (for reading).

Writes go straight to the file without buffering: a chunk read from QEMU is at most a few KiB
and the run directory is on a local filesystem (tmpfs under /run), where such a write takes
microseconds; the event loop is never held for long.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SerialLogLimit:
    """How much of a guest's serial output is kept: `files` files of `file_bytes` each."""

    file_bytes: int = 256 * 1024
    files: int = 2

    def __post_init__(self) -> None:
        if self.file_bytes < 1 or self.files < 1:
            raise ValueError("a serial log needs at least one file of at least one byte")

    @property
    def total_bytes(self) -> int:
        return self.file_bytes * self.files


DEFAULT_LIMIT = SerialLogLimit()


def log_files(path: Path, files: int) -> list[Path]:
    """The files of the log at `path`, oldest first: `path.N-1`, …, `path.1`, `path`."""
    return [path.with_name(f"{path.name}.{n}") for n in range(files - 1, 0, -1)] + [path]


def _open_regular(path: Path, flags: int) -> int | None:
    """A descriptor of `path` if it is a regular file with one link, else None. Never follows
    a symlink, and never waits on a FIFO (O_NONBLOCK)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO without a reader
            return None
        raise
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(fd)
        return None
    return fd


def read_log(path: Path, files: int, max_bytes: int | None = None) -> bytes:
    """What the log at `path` holds, oldest output first; only the last `max_bytes` if given.
    A file that is not a plain log file (a planted symlink, FIFO, hard link) is skipped."""
    kept = b""
    for file in log_files(path, files):
        fd = _open_regular(file, os.O_RDONLY)
        if fd is None:
            continue
        with os.fdopen(fd, "rb") as opened:
            kept += opened.read()
    if max_bytes is None:
        return kept
    return kept[len(kept) - max_bytes :] if max_bytes < len(kept) else kept


def remove_log(path: Path, files: int) -> None:
    """Remove every file of the log at `path` (a VM starts with an empty log)."""
    for file in log_files(path, files):
        file.unlink(missing_ok=True)


class RotatingLog:
    """An append-only log at `path` that never grows beyond `limit`."""

    def __init__(self, path: Path, limit: SerialLogLimit) -> None:
        self.path = path
        self.limit = limit
        self._fd = self._open()
        # A previous daemon may have left a file larger than today's limit: rotate it first.
        self._size = os.fstat(self._fd).st_size
        if self._size >= limit.file_bytes:
            self._rotate()

    def _open(self) -> int:
        # 0600: the guest's output may hold anything its owner printed.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = _open_regular(self.path, flags)
        if fd is None:
            # Not a log file of ours: replace whatever it is (the entry, not its target).
            self.path.unlink(missing_ok=True)
            fd = _open_regular(self.path, flags | os.O_EXCL)
            if fd is None:
                raise OSError(errno.EEXIST, "serial log replaced while it was created", self.path)
        return fd

    def write(self, data: bytes) -> None:
        """Append `data`, rotating as often as needed; no file ever exceeds `file_bytes`."""
        if self._fd < 0:  # a rotation failed (e.g. a full filesystem): try again
            self._fd = self._open()
            self._size = os.fstat(self._fd).st_size
        view = memoryview(data)
        while view:
            if self._size >= self.limit.file_bytes:
                self._rotate()
            written = os.write(self._fd, view[: self.limit.file_bytes - self._size])
            self._size += written
            view = view[written:]

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1  # never a stale number, should what follows fail
        files = log_files(self.path, self.limit.files)
        if len(files) == 1:
            self.path.unlink(missing_ok=True)  # one file: the newest output starts it afresh
        else:
            # files[0] is the oldest and is overwritten by the rename of the one after it.
            for older, newer in itertools.pairwise(files):
                if newer.exists():
                    newer.replace(older)
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
