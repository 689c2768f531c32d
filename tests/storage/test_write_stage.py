"""WriteStage on real drive files: nothing reaches the drive before `apply`, the staging file
leaves no name behind, and what is applied is exactly what was staged."""

import os
from pathlib import Path

import pytest

from openhosting.storage import write_stage
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
