"""This host's image cache: read-only copies of standard drives, for the VMs of this host that
attach one as a cdrom (docs/cluster.md, 'Standard drives on the agents' hosts').

A copy is a file `<state_dir>/image-cache/<drive>-<generation>.img`: the standard drive's UUID
and its generation (which changes whenever its bytes do, services/drives/standard_drives.py), so a
copy of older bytes never passes for the new ones. The directory is apart from the drive tiers:
no drive call (named by a user's drive UUID and a tier) reaches it, only the control plane's
cache calls (agent/cache_routes.py) and its fills (agent/drive_streams.py).

A fill writes a temporary file of its own (`.<name>.<random>.part`), makes it durable (fsync),
read-only, and renames it into place, then makes the rename durable: a copy is whole or
absent, never half-written, whatever fails or dies when. Two fills of one copy at once each
write their own file; the second rename replaces the first with the same bytes (a VM that
opened the first keeps it). Temporary files are removed by their fill when it fails, and at
the agent's start (`clear_partial`: no fill runs then).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from openhosting.directory_sync import sync_directory
from openhosting.errors import FailedError, FullError, UsageError
from openhosting.reverter import Reverter
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.storage_calls import CachedCopy

log = logging.getLogger("openhosting.agent")

CACHE_DIRECTORY = "image-cache"
PARTIAL_SUFFIX = ".part"
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
GENERATION_PATTERN = r"[0-9a-f]{1,32}"
_ENTRY = re.compile(rf"({UUID_PATTERN})-({GENERATION_PATTERN})\.img")


def copy_name(drive: str, generation: str) -> str:
    """The file name of a copy; ValueError unless `drive` is a UUID and `generation` one."""
    name = f"{drive}-{generation}.img"
    if not _ENTRY.fullmatch(name):
        raise ValueError(f"not a standard drive's UUID and generation: {name[:120]!r}")
    return name


class ImageCache:
    """The copies of standard drives in `directory` (made at the first fill)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_of(self, drive: str, generation: str) -> Path:
        return self.directory / copy_name(drive, generation)

    def has(self, drive: str, generation: str) -> bool:
        path = self.path_of(drive, generation)
        return path.is_file() and not path.is_symlink()

    def copies(self) -> list[CachedCopy]:
        """Every whole copy, in name order (temporary files, and anything but a plain file
        of a copy's name, are not copies)."""
        found = []
        try:
            entries = sorted(os.scandir(self.directory), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):  # no copy made yet, or none can be
            return []
        for entry in entries:
            if (match := _ENTRY.fullmatch(entry.name)) is None:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed meanwhile
                continue
            found.append(CachedCopy(match[1], match[2], size))
        return found

    def remove(self, drive: str, generation: str) -> bool:
        """Remove a copy (a VM that has it open reads on: the file goes with its last
        reader); whether there was one."""
        try:
            self.path_of(drive, generation).unlink()
        except FileNotFoundError:
            return False
        log.info("event=agent_standard_copy_removed drive=%s generation=%s", drive, generation)
        return True

    def clear_partial(self) -> int:
        """Remove the temporary files of fills that did not end (at start: none runs)."""
        removed = 0
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for name in names:
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                (self.directory / name).unlink(missing_ok=True)
                removed += 1
        if removed:
            log.warning("event=agent_image_cache_partial_removed count=%s", removed)
        return removed

    def fill(self, drive: str, generation: str, size: int, pieces: Iterable[memoryview]) -> int:
        """Write the copy of `drive` at `generation` from `pieces`, which must be `size`
        bytes in all, and put it in place once durable; the bytes written. Blocking (a
        stream's thread). Runs of zeros are left as holes. FullError when the disk is full,
        UsageError when the bytes are not `size`, FailedError for any other file error; an
        error of `pieces` (the stream cut) is raised as it is. Nothing is left of a fill
        that fails."""
        final = self.path_of(drive, generation)
        with _file_errors(drive):
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(
                prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX, dir=self.directory
            )
        with Reverter() as revert:
            revert.add(lambda: os.unlink(temporary))
            try:
                written = 0
                for piece in pieces:
                    if written + len(piece) > size:
                        raise UsageError(f"more than the {size} bytes announced")
                    if piece.nbytes and bytes(piece).count(0) != piece.nbytes:
                        with _file_errors(drive):
                            pwrite_all(fd, piece, written)
                    written += len(piece)
                if written != size:
                    raise UsageError(f"{written} bytes of the {size} announced")
                with _file_errors(drive):
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                    os.fchmod(fd, 0o444)  # read-only: no VM is given it writable either
            finally:
                os.close(fd)
            with _file_errors(drive):
                os.rename(temporary, final)
            revert.success()
        with _file_errors(drive):
            sync_directory(self.directory)
        return written


@contextlib.contextmanager
def _file_errors(drive: str) -> Iterator[None]:
    """A file error of the cache as the API's: FullError for no room, else FailedError."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FullError(f"No room for a copy of standard drive {drive}") from None
        raise FailedError(
            f"Cannot write a copy of standard drive {drive}: {error.strerror or error}"
        ) from None
