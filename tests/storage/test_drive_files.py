"""Drive files: an encrypted drive's aligned writes go to the disk directly, and every write,
direct or not, reads back as written."""

import asyncio
import contextlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from openhosting.storage import drive_files
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


async def next_turn() -> None:
    """Past the event loop's next look at its descriptors (and what it read run)."""
    for _ in range(2):
        await asyncio.sleep(0)


async def test_availability_is_looked_at_once_while_its_directory_hears_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the event loop a drive's availability is kept while its directory's watch hears no
    change (an info looked with an open, fstat and close each time), for AVAILABILITY_SECONDS
    at most; a rename, or anything else done to the directory's entries, is seen at once."""
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(DRIVE, MiB)
    looks: list[str] = []
    look = drive_files.file_is_available

    def counted(path: str | Path) -> bool:
        looks.append(str(path))
        return look(path)

    monkeypatch.setattr(drive_files, "file_is_available", counted)
    now = [1000.0]
    monkeypatch.setattr(drive_files, "monotonic", lambda: now[0])
    try:
        assert [files.is_available(DRIVE) for _ in range(5)] == [True] * 5
        assert len(looks) == 1  # five before
        with files.open(DRIVE, None) as drive_io:  # its bytes changed: no entry did
            drive_io.write_at(0, b"x" * 4096)
            drive_io.sync()
        await next_turn()
        assert files.is_available(DRIVE) and len(looks) == 1

        path = files.path_of(DRIVE)
        path.rename(path.with_suffix(".away"))  # as when its storage is not mounted
        await next_turn()
        assert [files.is_available(DRIVE) for _ in range(3)] == [False] * 3
        path.with_suffix(".away").rename(path)
        await next_turn()
        assert files.is_available(DRIVE) and len(looks) == 3

        # What no watch tells (a file system failing under the file) within the bound.
        now[0] += drive_files.AVAILABILITY_SECONDS / 2
        assert files.is_available(DRIVE) and len(looks) == 3
        now[0] += drive_files.AVAILABILITY_SECONDS
        assert files.is_available(DRIVE) and len(looks) == 4

        # Off the event loop (a worker thread), or once closed: looked at every time.
        await asyncio.to_thread(files.is_available, DRIVE)
        assert len(looks) == 5
        files.close()
        assert files.is_available(DRIVE) and len(looks) == 6
    finally:
        files.close()


async def test_a_lost_watch_is_replaced_and_nothing_it_kept_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(DRIVE, MiB)
    looks: list[str] = []
    look = drive_files.file_is_available
    monkeypatch.setattr(
        drive_files, "file_is_available", lambda path: looks.append(path) or look(path)
    )
    try:
        assert files.is_available(DRIVE) and len(looks) == 1
        # The directory moved away and back: its watch can tell no more.
        (tmp_path / "drives").rename(tmp_path / "moved")
        (tmp_path / "moved").rename(tmp_path / "drives")
        await next_turn()
        assert [files.is_available(DRIVE) for _ in range(4)] == [True] * 4
        assert len(looks) == 3  # looked at while lost, then by the new watch once
        files.path_of(DRIVE).unlink()
        await next_turn()
        assert not files.is_available(DRIVE)
    finally:
        files.close()


def inotify_descriptors() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


async def test_a_watch_started_ahead_is_the_one_descriptor_its_looks_use(tmp_path: Path) -> None:
    """The daemon starts its drive directories' watches before serving: no descriptor is
    opened by the first info under load, and closing leaves none."""
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(DRIVE, MiB)
    before = inotify_descriptors()
    files.watch()
    try:
        assert inotify_descriptors() == before + 1
        assert files.is_available(DRIVE) and files.is_available(DRIVE)
        files.watch()
        assert inotify_descriptors() == before + 1
    finally:
        files.close()
    assert inotify_descriptors() == before


def test_two_threads_writing_at_once_open_one_direct_descriptor_and_close_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw write flushes two pieces at once, each in a thread: the first aligned write of
    each opens the O_DIRECT descriptor if none is open yet. Both found none and both opened
    one; the one kept was closed with the drive, the other held the file (and, once the
    drive was destroyed, its disk space) until the daemon ended (seen under load)."""
    files = DriveFiles(tmp_path / "drives")
    key = files.create_encrypted(DRIVE, 4 * IO_CHUNK, b"secret")
    path = files.path_of(DRIVE)
    opens: list[Path] = []  # every open tried, taken or refused by the file system

    def slow_open_direct(target: Path) -> int | None:
        opens.append(target)
        # Slow enough that the other thread reaches its own first write meanwhile.
        time.sleep(0.3)
        return real_open_direct(target)

    real_open_direct = drive_files.open_direct
    monkeypatch.setattr(drive_files, "open_direct", slow_open_direct)
    pieces = [random.Random(piece).randbytes(IO_CHUNK) for piece in range(2)]
    with files.open(DRIVE, key) as drive_io:
        writers = [
            threading.Thread(target=drive_io.write_at, args=(index * IO_CHUNK, piece))
            for index, piece in enumerate(pieces)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=30)
        assert drive_io.read_at(0, 2 * IO_CHUNK) == b"".join(pieces)
    assert opens == [path]
    held = [
        name for name in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{name}") == str(path.resolve())
    ]  # fmt: skip
    assert held == []
