"""The SHA-256 of a range of a drive's bytes, as the drive holds them (decrypted for an
encrypted drive), read in large pieces with constant memory.

Ranges never written are hashed as the zeros they read as, without reading the file: one
`SEEK_DATA` per piece tells them apart. The caller runs this in a worker thread (hashlib
releases the GIL on large buffers) and may stop it between pieces with `stop`.
"""

import hashlib
import os
import threading

from openhosting.storage.drive_files import EncryptedDriveIO, PlainDriveIO

HASH_ALGORITHM = "sha256"
# Large pieces amortise the system calls and the per-call cost of AES; measured on this
# platform, 4 MiB hashes at the speed of 8 MiB and keeps the memory of many hashes small.
HASH_PIECE = 4 * 1024 * 1024
_ZEROS = memoryview(bytes(HASH_PIECE))


class HashStopped(Exception):
    """The hash was stopped (its request went away) before it reached the range's end."""


def hash_range(
    drive_io: PlainDriveIO | EncryptedDriveIO,
    offset: int,
    count: int,
    stop: threading.Event | None = None,
) -> str:
    """The hex SHA-256 of the drive's `count` bytes from `offset` (the caller keeps the range
    within the drive). Raises HashStopped when `stop` is set between two pieces."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_PIECE) if isinstance(drive_io, PlainDriveIO) else None
    position, end = offset, offset + count
    while position < end:
        if stop is not None and stop.is_set():
            raise HashStopped(f"hash stopped at byte {position} of {end}")
        length = min(HASH_PIECE, end - position)
        if drive_io.holds_no_data(position, length):
            digest.update(_ZEROS[:length])
        elif buffer is not None:
            view = memoryview(buffer)[:length]
            _read_plain_into(drive_io.fileno(), view, position)
            digest.update(view)
        else:
            digest.update(drive_io.read_at(position, length))
        position += length
    return digest.hexdigest()


def _read_plain_into(fd: int, view: memoryview, position: int) -> None:
    """Fill `view` from the plain drive file at `position`; past the file's end (a resize the
    daemon has not put right yet) the drive reads as zeros, as a sparse file would."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], position + done)
        if got == 0:
            view[done:] = _ZEROS[: len(view) - done]
            return
        done += got
