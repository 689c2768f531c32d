"""The download's output file: aligned chunks go straight to the disk (O_DIRECT, past the page
cache), everything else through the page cache, and a file system that refuses O_DIRECT is
written all the same."""

import errno
import fcntl
import mmap
import os
from pathlib import Path

import pytest

from openhosting.client.download import ChunkBuffers, OutputFile
from tests.disk_tmp import cached_bytes

PAGE = 4096


def aligned_chunk(length: int, fill: bytes) -> mmap.mmap:
    buffer = ChunkBuffers().get(length)
    buffer[:] = (fill * (length // len(fill) + 1))[:length]
    return buffer


def test_aligned_chunks_bypass_the_page_cache_and_the_rest_uses_it(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    target = (disk_tmp_path or tmp_path) / "image"
    output = OutputFile(str(target))
    first, second = aligned_chunk(64 * PAGE, b"ab"), aligned_chunk(64 * PAGE, b"cde")
    tail = os.urandom(1000)
    try:
        output.write(0, first, zero=False)
        output.write(64 * PAGE, second, zero=False)
        if disk_tmp_path is not None:
            assert cached_bytes(target) == 0  # written by O_DIRECT
        output.write(128 * PAGE, tail, zero=False)  # unaligned: through the page cache
        assert cached_bytes(target) > 0
    finally:
        output.close()
    # Without a disk (tmpfs caches whatever it is told), what must still hold is every byte.
    assert target.read_bytes() == bytes(first) + bytes(second) + tail


def test_an_unaligned_offset_is_written_through_the_page_cache(tmp_path: Path) -> None:
    target = tmp_path / "image"
    output = OutputFile(str(target))
    chunk = aligned_chunk(16 * PAGE, b"xyz")
    try:
        output.write(512, chunk, zero=False)
    finally:
        output.close()
    assert target.read_bytes() == bytes(512) + bytes(chunk)


def test_a_refused_o_direct_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "image"
    output = OutputFile(str(target))
    real_pwrite, refused = os.pwrite, []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    chunks = [aligned_chunk(8 * PAGE, bytes([n + 1])) for n in range(3)]
    try:
        for index, chunk in enumerate(chunks):
            output.write(index * 8 * PAGE, chunk, zero=False)
    finally:
        output.close()
    assert refused == [0]  # asked once, then never again
    assert target.read_bytes() == b"".join(bytes(chunk) for chunk in chunks)


def test_other_write_errors_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = OutputFile(str(tmp_path / "image"))

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    try:
        with pytest.raises(OSError) as raised:
            output.write(0, aligned_chunk(PAGE, b"z"), zero=False)
        assert raised.value.errno == errno.ENOSPC
    finally:
        output.close()
