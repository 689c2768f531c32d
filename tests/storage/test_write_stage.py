"""WriteStage on real drive files: nothing reaches the drive before `apply`, the staging file
leaves no name behind, and what is applied is exactly what was staged."""

import itertools
import os
import random
from pathlib import Path

import pytest

from openhosting.storage import drive_files, write_stage
from openhosting.storage.drive_files import DriveFiles
from openhosting.storage.write_stage import MEMORY_BOUND, WriteStage

UUID = "6c1f3a52-0b7e-4a8e-9d1c-2f4b5e6a7c80"
SIZE = MEMORY_BOUND + 4 * 1024 * 1024
KEY = b"k" * 32 + b"t" * 32


def stage_all(stage: WriteStage, data: bytes, piece: int = 1 << 20) -> None:
    for at in range(0, len(data), piece):
        stage.append(data[at : at + piece])
        if stage.wants_spill():
            stage.spill()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_nothing_reaches_the_drive_before_apply_and_all_of_it_after(
    tmp_path: Path, encrypted: bool
) -> None:
    files = DriveFiles(tmp_path / "drives")
    key = None
    if encrypted:
        key = files.create_encrypted(UUID, SIZE, b"passphrase")
    else:
        files.create_plain(UUID, SIZE)
    offset, data = 777, os.urandom(MEMORY_BOUND + 1000)
    with files.open(UUID, key) as drive_io:
        stage = WriteStage(drive_io, files.root, offset)
        stage_all(stage, data)
        assert drive_io.holds_no_data(0, SIZE)  # staged bytes went to the staging file
        stage.apply()
        assert drive_io.read_at(offset, len(data)) == data
        assert drive_io.read_at(0, offset) == bytes(offset)
    assert os.listdir(files.root) == [f"{UUID}.img"]


def test_where_nameless_files_cannot_be_made_the_named_one_is_unlinked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_tmpfile(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(write_stage.os, "open", no_tmpfile)
    fd = write_stage.open_staging_file(tmp_path)
    try:
        os.write(fd, b"staged")
        assert os.listdir(tmp_path) == []
    finally:
        os.close(fd)


def test_a_gathered_write_lands_whole_when_the_kernel_takes_it_in_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More pieces than one pwritev takes (IOV_MAX), each write cut short by the kernel:
    every byte lands once, in order."""
    real_pwritev = os.pwritev
    calls: list[int] = []

    def short_pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        assert len(buffers) <= drive_files.IOV_MAX
        calls.append(len(buffers))
        taken, left = [], 5000  # at most this much a call, cutting a piece in two
        for buffer in buffers:
            taken.append(buffer[:left])
            left -= len(taken[-1])
            if not left:
                break
        return real_pwritev(fd, taken, offset)

    monkeypatch.setattr(drive_files.os, "pwritev", short_pwritev)
    pieces = [os.urandom(random.randrange(1, 300)) for _ in range(drive_files.IOV_MAX + 500)]
    pieces.insert(7, b"")
    path = tmp_path / "target"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        drive_files.pwritev_all(fd, pieces, 10)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(10) + b"".join(pieces)
    assert len(calls) > 1


def test_a_body_staged_in_tiny_pieces_is_held_in_few_buffers(tmp_path: Path) -> None:
    """A body that trickles in (a byte or two per piece) is copied together: held as a
    million objects, its memory would be fifty times its size."""
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(UUID, SIZE)
    data = os.urandom(300_000)
    with files.open(UUID, None) as drive_io:
        stage = WriteStage(drive_io, files.root, 0)
        for at in range(0, len(data), 3):
            stage.append(data[at : at + 3])
        big = os.urandom(write_stage.SMALL_PIECE)
        stage.append(big)
        stage.append(b"x")
        assert len(stage._pieces) == 3  # the tiny ones together, the big one as it came
        stage.apply()
        assert drive_io.read_at(0, len(data) + len(big) + 1) == data + big + b"x"


def test_applying_starts_each_megabytes_write_back_before_the_sync(tmp_path: Path) -> None:
    """The disk works on the first pieces while the next are written, as a raw write does:
    the fdatasync before the answer finds less left to do."""
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(UUID, SIZE)
    data = os.urandom(3 * drive_files.WRITEBACK_PIECE + 1000)
    events: list[tuple[str, int, int]] = []
    with files.open(UUID, None) as drive_io:
        real_start, real_sync = drive_io.start_writeback, drive_io.sync

        def recorded_start(offset: int, length: int) -> None:
            events.append(("writeback", offset, length))
            real_start(offset, length)

        def recorded_sync() -> None:
            events.append(("sync", 0, 0))
            real_sync()

        drive_io.start_writeback = recorded_start  # type: ignore[method-assign]
        drive_io.sync = recorded_sync  # type: ignore[method-assign]
        stage = WriteStage(drive_io, files.root, 4096)
        for at in range(0, len(data), 300_000):
            stage.append(data[at : at + 300_000])
        stage.apply()
        assert drive_io.read_at(4096, len(data)) == data
    assert events[-1] == ("sync", 0, 0)
    started = events[:-1]
    # Whole groups of a megabyte or more, one after another; the rest goes with the sync.
    assert len(started) == 2
    assert started[0][1] == 4096 and all(length >= 1 << 20 for _, _, length in started)
    assert all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(started))


MIB = 1 << 20
ZERO_RUN = 48 * MIB
ZERO_BLOCK = 64 * 1024  # sparse.ZERO_BLOCK: zeros stay holes in blocks of this


def blocks_of(path: Path) -> int:
    """Bytes of disk the file takes."""
    return os.stat(path).st_blocks * 512


def staged_with_zeros(stage: WriteStage, data: bytes) -> int:
    """Stage `data` and return the staging file's disk use just before `apply`."""
    stage_all(stage, data, piece=512 * 1024 + 3)  # pieces cut across blocks, as a body's are
    assert stage._fd is not None  # a staging file was made
    return os.fstat(stage._fd).st_blocks * 512


@pytest.mark.parametrize("over", ["holes", "old data"])
def test_a_staged_run_of_zeros_takes_no_disk_in_the_staging_file_nor_in_a_plain_drive(
    tmp_path: Path, over: str
) -> None:
    """Tens of megabytes of zeros between two pieces of data, at an odd offset: the staging
    file holds the data only, and the drive gets no block for the zeros (over old data, the
    zeros free its blocks, as writing zeros would make them zeros); it reads back exactly."""
    files = DriveFiles(tmp_path / "drives")
    size = ZERO_RUN + 8 * MIB
    files.create_plain(UUID, size)
    path = files.path_of(UUID)
    old = os.urandom(size) if over == "old data" else bytes(size)
    if over == "old data":
        path.write_bytes(old)
    offset = MIB + 777
    data = os.urandom(MIB) + bytes(ZERO_RUN) + os.urandom(MIB + 5)
    before = blocks_of(path)
    with files.open(UUID, None) as drive_io:
        stage = WriteStage(drive_io, files.root, offset)
        staged = staged_with_zeros(stage, data)
        stage.apply()
        assert drive_io.read_at(0, size) == old[:offset] + data + old[offset + len(data) :]
    assert staged <= 2 * MIB + 4 * ZERO_BLOCK  # the data only
    slack = 2 * ZERO_BLOCK  # the zero run's first and last blocks hold data
    if over == "holes":
        assert blocks_of(path) <= before + 2 * MIB + slack
    else:
        assert blocks_of(path) <= before - ZERO_RUN + slack
    assert os.listdir(files.root) == [f"{UUID}.img"]


def test_an_encrypted_drives_staged_zeros_take_no_staging_disk_and_are_real_ciphertext(
    tmp_path: Path,
) -> None:
    """On an encrypted drive zeros are written as ciphertext (a hole of the container is no
    zeros to QEMU), but their staging still takes no disk."""
    files = DriveFiles(tmp_path / "drives")
    size = ZERO_RUN + 8 * MIB
    key = files.create_encrypted(UUID, size, b"passphrase")
    offset = MIB + 777
    data = os.urandom(MIB) + bytes(ZERO_RUN) + os.urandom(MIB + 5)
    with files.open(UUID, key) as drive_io:
        drive_io.write_at(0, b"\xa5" * size)
        stage = WriteStage(drive_io, files.root, offset)
        staged = staged_with_zeros(stage, data)
        stage.apply()
        expected = b"\xa5" * offset + data + b"\xa5" * (size - offset - len(data))
        assert drive_io.read_at(0, size) == expected
        base = drive_io.payload_offset
    assert staged <= 2 * MIB + 4 * ZERO_BLOCK
    with open(files.path_of(UUID), "rb") as container:  # the zeros' sectors, as stored
        container.seek(base + offset + 2 * MIB)
        stored = container.read(ZERO_RUN - 2 * MIB)
    assert all(stored[at : at + 512] != bytes(512) for at in range(0, len(stored), 512))


def test_where_holes_are_not_told_nothing_is_left_out_of_the_staging_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system whose SEEK_DATA sees every byte as data: zeros are staged as they
    are, so an encrypted drive still gets their ciphertext, never zero sectors."""
    real_lseek = os.lseek

    def no_holes(fd: int, position: int, how: int) -> int:
        if how == os.SEEK_DATA:
            return position
        if how == os.SEEK_HOLE:
            return os.fstat(fd).st_size
        return real_lseek(fd, position, how)

    monkeypatch.setattr(write_stage.os, "lseek", no_holes)
    files = DriveFiles(tmp_path / "drives")
    key = files.create_encrypted(UUID, SIZE, b"passphrase")
    data = os.urandom(MIB) + bytes(MEMORY_BOUND) + os.urandom(MIB)
    with files.open(UUID, key) as drive_io:
        drive_io.write_at(0, b"\xa5" * SIZE)
        stage = WriteStage(drive_io, files.root, 0)
        stage_all(stage, data)
        stage.apply()
        assert drive_io.read_at(0, len(data)) == data
        base = drive_io.payload_offset
    with open(files.path_of(UUID), "rb") as container:
        container.seek(base + 2 * MIB)
        assert container.read(512) != bytes(512)
