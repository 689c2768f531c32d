"""`hash_range` on real drive files: the SHA-256 of the drive's bytes (decrypted), holes as
zeros, a file shorter than its drive as zeros past its end, and a stop between pieces."""

import hashlib
import os
import threading
from pathlib import Path

import pytest

from openhosting.storage.drive_files import DriveFiles
from openhosting.storage.drive_hash import HASH_PIECE, HashStopped, hash_range

UUID = "0d6f0a3e-7f0c-4c86-9a43-5d1d2b7e9a10"
SIZE = 2 * HASH_PIECE + 4099


def make_drive(files: DriveFiles, encrypted: bool) -> bytes | None:
    if encrypted:
        return files.create_encrypted(UUID, SIZE, b"passphrase")
    files.create_plain(UUID, SIZE)
    return None


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_the_hash_is_of_the_drives_bytes_with_holes_as_zeros(
    tmp_path: Path, encrypted: bool
) -> None:
    files = DriveFiles(tmp_path / "drives")
    key = make_drive(files, encrypted)
    expected = bytearray(SIZE)
    data = os.urandom(3 * 65536 + 3)
    at = HASH_PIECE - 65536 - 1  # across the first piece's edge; the last piece is a hole
    expected[at : at + len(data)] = data
    with files.open(UUID, key) as drive_io:
        drive_io.write_at(at, data)
        assert hash_range(drive_io, 0, SIZE) == hashlib.sha256(expected).hexdigest()
        for offset, count in ((at, len(data)), (at + 1, 1000), (SIZE - 3, 3), (5, 0)):
            want = hashlib.sha256(expected[offset : offset + count]).hexdigest()
            assert hash_range(drive_io, offset, count) == want, (offset, count)
    if encrypted:  # the file holds ciphertext: the hash is not the file's
        raw = files.path_of(UUID).read_bytes()
        assert hashlib.sha256(raw).hexdigest() != hashlib.sha256(expected).hexdigest()


def test_a_plain_file_shorter_than_the_range_hashes_as_zeros_past_its_end(
    tmp_path: Path,
) -> None:
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(UUID, SIZE)
    with files.open(UUID, None) as drive_io:
        drive_io.write_at(0, b"x" * 10)
        os.truncate(files.path_of(UUID), 100)  # a resize cut short by a killed daemon
        want = hashlib.sha256(b"x" * 10 + bytes(SIZE - 10)).hexdigest()
        assert hash_range(drive_io, 0, SIZE) == want


def test_a_set_stop_ends_the_hash_before_its_next_piece(tmp_path: Path) -> None:
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(UUID, SIZE)
    stop = threading.Event()
    stop.set()
    with files.open(UUID, None) as drive_io, pytest.raises(HashStopped):
        hash_range(drive_io, 0, SIZE, stop)
