"""Whole positioned writes: short writes completed, and nothing of the data held after a
refusal."""

import errno
import os
from pathlib import Path

import pytest

from openhosting.storage import file_writes
from openhosting.storage.file_writes import pwrite_all


def test_short_writes_are_taken_up_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    calls = []

    def a_few_bytes_at_a_time(fd: int, data: memoryview, position: int) -> int:
        calls.append(position)
        return real_pwrite(fd, data[:7], position)

    monkeypatch.setattr(file_writes.os, "pwrite", a_few_bytes_at_a_time)
    data = os.urandom(100)
    path = tmp_path / "file"
    path.write_bytes(bytes(200))
    fd = os.open(path, os.O_RDWR)
    try:
        pwrite_all(fd, data, 50)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(50) + data + bytes(50)
    assert calls == list(range(50, 150, 7))


def test_a_refused_write_leaves_its_data_free_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused after a short write (a disk filling up): the error is the write's, and no
    view of the data outlives the call, even with the error's traceback kept."""
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: memoryview, position: int) -> int:
        if position == 0:
            return real_pwrite(fd, data[: len(data) // 2], position)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_writes.os, "pwrite", half_then_full)
    data = bytearray(os.urandom(64))
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError) as refused:
            pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    assert refused.value.errno == errno.ENOSPC
    assert refused.value.__traceback__ is not None  # kept, frames and all
    data.extend(b"more")  # BufferError while a view of it was still exported
    assert len(data) == 68
