"""Drive files: an encrypted drive's aligned writes go to the disk directly, and every write,
direct or not, reads back as written."""

import os
import random
from pathlib import Path

from openhosting.storage.drive_files import IO_CHUNK, DriveFiles
from tests.disk_tmp import cached_bytes
from tests.storage.test_luks import reference_plaintext

MiB = 1024 * 1024
DRIVE = "0b0c0d0e-0000-4000-8000-00000000000f"


def test_aligned_encrypted_writes_skip_the_page_cache_and_read_back_exactly(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    files = DriveFiles((disk_tmp_path or tmp_path) / "drives")
    size = 3 * IO_CHUNK + 5000
    key = files.create_encrypted(DRIVE, size, b"secret")
    rng = random.Random(7)
    whole = rng.randbytes(2 * IO_CHUNK)
    odd = rng.randbytes(1000)
    path = files.path_of(DRIVE)
    with files.open(DRIVE, key) as drive_io:
        header_pages = cached_bytes(path)  # the LUKS header and key slot, written just now
        drive_io.write_at(IO_CHUNK, whole)  # page-aligned whole pages: direct
        if disk_tmp_path is not None:
            assert cached_bytes(path) == header_pages  # 8 MiB more, none of it cached
        drive_io.write_at(777, odd)  # inside sectors: through the page cache, as before
        drive_io.write_at(size - 512, bytes(512))  # whole sector, not a whole page
        drive_io.sync()
        assert drive_io.read_at(0, size) == (
            bytes(777) + odd + bytes(IO_CHUNK - 1777) + whole
            + bytes(size - 3 * IO_CHUNK)
        )  # fmt: skip
    # The ciphertext is what cryptography's own XTS decrypts (what QEMU reads).
    plain = reference_plaintext(path, key)
    assert plain[IO_CHUNK : 3 * IO_CHUNK] == whole
    assert plain[777:1777] == odd
    assert os.path.getsize(path) > size
