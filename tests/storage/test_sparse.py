"""Sparse files: finding their data and copying only that."""

import errno
import os
import random
import threading
from pathlib import Path

import pytest

from openhosting.storage import file_writes, sparse
from openhosting.storage.sparse import (
    DIRECT_ALIGNMENT,
    DIRECT_PIECE,
    DirectCopy,
    copy_file_sparse,
    copy_range,
    data_extents,
    open_direct,
    punch_hole,
)

MiB = 1024 * 1024


def sparse_file(path: Path, size: int, pieces: dict[int, bytes]) -> None:
    with path.open("wb") as file:
        file.truncate(size)
        for offset, data in pieces.items():
            file.seek(offset)
            file.write(data)


def test_data_extents_cover_every_written_byte_and_skip_the_holes(tmp_path: Path) -> None:
    path = tmp_path / "file"
    pieces = {0: b"a" * 10, 5 * MiB: b"b" * 100_000, 64 * MiB - 3: b"end"}
    sparse_file(path, 64 * MiB, pieces)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, 64 * MiB))
        limited = list(data_extents(fd, 1 * MiB, 6 * MiB))
    finally:
        os.close(fd)
    for offset, data in pieces.items():
        assert any(first <= offset and offset + len(data) <= end for first, end in extents)
    assert sum(end - first for first, end in extents) < 2 * MiB
    assert all(1 * MiB <= first < end <= 6 * MiB for first, end in limited)
    assert limited


def test_sparse_copy_keeps_content_and_holes(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    sparse_file(source, 256 * MiB + 7, {3 * MiB: os.urandom(MiB), 256 * MiB: b"1234567"})
    assert copy_file_sparse(source, target) == 256 * MiB + 7
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 < 4 * MiB
    assert target.stat().st_mode & 0o777 == 0o600


def test_copy_range_moves_a_range_to_the_same_offset(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    data = os.urandom(3 * MiB)
    source.write_bytes(data)
    sparse_file(target, 3 * MiB, {})
    seen: list[int] = []
    with source.open("rb") as src, target.open("r+b") as dst:
        assert copy_range(src.fileno(), dst.fileno(), MiB, 2 * MiB + 5, seen.append) in (
            MiB,  # copy_file_range unsupported between these files: nothing done
            2 * MiB + 5,
        )
    if seen:
        assert sum(seen) == MiB + 5
        assert target.read_bytes() == bytes(MiB) + data[MiB : 2 * MiB + 5] + bytes(MiB - 5)


def test_a_punched_hole_reads_as_zeros_frees_its_blocks_and_keeps_the_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "file"
    path.write_bytes(os.urandom(3 * MiB))
    with path.open("r+b") as file:
        assert punch_hole(file.fileno(), MiB, MiB)
        assert list(data_extents(file.fileno(), 0, 3 * MiB)) == [(0, MiB), (2 * MiB, 3 * MiB)]
    data = path.read_bytes()
    assert len(data) == 3 * MiB and data[MiB : 2 * MiB] == bytes(MiB)
    assert path.stat().st_blocks * 512 <= 2 * MiB + 8192


def direct_copy(source: Path, target: Path, extents: list[tuple[int, int]]) -> list[int]:
    """Copy `extents` of `source` into `target` as an imaging copy does: the aligned part of
    each with DirectCopy, the rest with copy_range; returns what `advance` heard."""
    seen: list[int] = []
    source_fd = os.open(source, os.O_RDONLY)
    target_fd = os.open(target, os.O_RDWR)
    direct_fd = open_direct(target)
    assert direct_fd is not None
    direct = DirectCopy(direct_fd, source_fd)
    try:
        for first, end in extents:
            done = direct.copy_range(first, end, seen.append)
            done = copy_range(source_fd, target_fd, done, end, seen.append)
            assert done == end  # copy_file_range works between two files of one file system
        direct.wait()
        os.fdatasync(target_fd)
    finally:
        direct.close()
        for fd in (direct_fd, target_fd, source_fd):
            os.close(fd)
    return seen


def test_a_direct_copy_writes_a_sparse_source_from_its_own_pages_two_pieces_at_once(
    disk_tmp_path: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the data extents move, to their offsets, holes kept; the source's bytes go from
    its map to the disk (never read into a buffer of ours), and the pooled writes run two at
    a time (one at a time before: 100 MiB durable in ~105 ms instead of ~65)."""
    directory = disk_tmp_path or tmp_path
    source, target = directory / "source", directory / "target"
    size = 96 * MiB + 1000
    pieces = {
        0: os.urandom(9 * MiB + 100),  # several pieces, an unaligned end
        40 * MiB: os.urandom(4096),
        64 * MiB + 4096: os.urandom(DIRECT_PIECE * 2 + 8192),
        size - 1500: os.urandom(1500),  # an unaligned start: copied the other way
    }
    sparse_file(source, size, pieces)
    sparse_file(target, size, {30 * MiB: b"old bytes"})
    with target.open("r+b") as file:  # as an imaging job empties DST first
        assert punch_hole(file.fileno(), 0, size)
    fd = os.open(source, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, size))
    finally:
        os.close(fd)
    assert len(extents) >= 4  # the holes are there to be skipped
    both_writing = threading.Barrier(2, timeout=10)
    pooled = 0
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        nonlocal pooled
        if threading.current_thread().name.startswith("direct-copy") and pooled < 2:
            pooled += 1
            both_writing.wait()  # broken (raised) unless a second write is under way meanwhile
        return real_pwrite(fd, data, offset)

    def no_reads(*_args: object) -> None:
        raise AssertionError("the source was read into a buffer")

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "preadv", no_reads)
    monkeypatch.setattr(os, "pread", no_reads)
    seen = direct_copy(source, target, extents)
    monkeypatch.undo()
    assert target.read_bytes() == source.read_bytes()
    assert sum(seen) == sum(end - first for first, end in extents)
    assert target.stat().st_blocks * 512 < 20 * MiB  # the holes stayed holes
    assert pooled == 2


def test_a_direct_copy_proves_direct_writes_with_one_page_once_per_file_system(
    disk_tmp_path: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one write made in the caller's thread, to learn whether the file system takes
    direct writes at all, is a single page: a whole 4 MiB piece written alone there held
    the second writer idle for its ~2 ms, at the start of every copy (~60 ms for 100 MiB).
    Once a file system took it, later copies onto it pool every write at once: that page's
    round trip to the disk alone cost every copy 0.4-3 ms more (as it did before)."""
    directory = disk_tmp_path or tmp_path
    source = directory / "source"
    size = 3 * DIRECT_PIECE
    sparse_file(source, size, {0: os.urandom(size)})
    writes: list[tuple[str, int]] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        writes.append((threading.current_thread().name, len(data)))
        return real_pwrite(fd, data, offset)

    # As in a daemon that just started (raising=False: the code before had no such set).
    monkeypatch.setattr(sparse, "_DIRECT_PROVEN", set(), raising=False)
    monkeypatch.setattr(os, "pwrite", pwrite)
    caller = threading.current_thread().name
    for copy in range(2):
        target = directory / f"target{copy}"
        sparse_file(target, size, {})
        writes.clear()
        seen = direct_copy(source, target, [(0, size)])
        assert target.read_bytes() == source.read_bytes()
        assert sum(seen) == size
        pooled = writes[1:] if copy == 0 else writes
        if copy == 0:
            assert writes[0] == (caller, DIRECT_ALIGNMENT)
        assert pooled and all(name.startswith("direct-copy") for name, _ in pooled)


def test_a_source_cut_short_under_a_direct_copy_fails_it_with_an_error_not_a_signal(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    """The source is mapped: a page gone from under the map is EFAULT to the kernel's write
    (a job's error), never the SIGBUS that touching it in this process would be."""
    directory = disk_tmp_path or tmp_path
    source, target = directory / "source", directory / "target"
    sparse_file(source, 8 * MiB, {0: os.urandom(8 * MiB)})
    sparse_file(target, 8 * MiB, {})
    source_fd = os.open(source, os.O_RDWR)
    direct_fd = open_direct(target)
    assert direct_fd is not None
    direct = DirectCopy(direct_fd, source_fd)
    try:
        assert direct.copy_range(0, DIRECT_PIECE, lambda _n: None) == DIRECT_PIECE  # mapped
        os.ftruncate(source_fd, 0)
        with pytest.raises(OSError) as raised:
            direct.copy_range(DIRECT_PIECE, 8 * MiB, lambda _n: None)
            direct.wait()
        assert raised.value.errno == errno.EFAULT
    finally:
        direct.close()
        os.close(direct_fd)
        os.close(source_fd)


def test_a_direct_copy_refused_after_a_short_write_fails_with_that_error(
    disk_tmp_path: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills mid-piece takes part of a write, then refuses the rest (ENOSPC):
    the copy fails with ENOSPC and closes. (The rest of the piece, a slice of the source's
    map, stayed alive in the error's traceback: closing the map raised BufferError, and the
    job failed as an internal error instead of "the platform's storage is full".)"""
    directory = disk_tmp_path or tmp_path
    source, target = directory / "source", directory / "target"
    sparse_file(source, 8 * MiB, {0: os.urandom(8 * MiB)})
    sparse_file(target, 8 * MiB, {})
    real_pwrite = os.pwrite
    taken: list[int] = []  # where the short write went

    def short_then_full(fd: int, data: memoryview, position: int) -> int:
        if position < DIRECT_PIECE:  # the first piece: written whole
            return real_pwrite(fd, data, position)
        if not taken:  # the next: half of it, then the disk is full
            taken.append(position)
            return real_pwrite(fd, data[: len(data) // 2], position)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_writes.os, "pwrite", short_then_full)
    source_fd = os.open(source, os.O_RDONLY)
    direct_fd = open_direct(target)
    assert direct_fd is not None
    direct = DirectCopy(direct_fd, source_fd)
    try:
        with pytest.raises(OSError) as raised:
            direct.copy_range(0, 8 * MiB, lambda _n: None)
            direct.wait()
        assert raised.value.errno == errno.ENOSPC and taken
    finally:
        direct.close()  # raised BufferError before
        os.close(direct_fd)
        os.close(source_fd)


def test_a_direct_copy_stopped_by_its_caller_closes_its_map(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    """Imaging's `advance` raises when the job is stopped (the daemon stopping): the copy
    stops with that error and closes. (A slice of the map made before the writes under way
    were collected stayed alive in the traceback: closing the map raised BufferError, and a
    job a daemon's stop interrupted failed as an internal error instead of starting again at
    the next start.)"""
    directory = disk_tmp_path or tmp_path
    source, target = directory / "source", directory / "target"
    sparse_file(source, 8 * DIRECT_PIECE, {0: os.urandom(8 * DIRECT_PIECE)})
    sparse_file(target, 8 * DIRECT_PIECE, {})

    class Stopped(Exception):
        pass

    heard: list[int] = []

    def advance(length: int) -> None:
        heard.append(length)
        if sum(heard) >= 2 * DIRECT_PIECE:
            raise Stopped

    source_fd = os.open(source, os.O_RDONLY)
    direct_fd = open_direct(target)
    assert direct_fd is not None
    direct = DirectCopy(direct_fd, source_fd)
    try:
        # Closed while the stop propagates, as imaging's `with` closes it.
        with pytest.raises(Stopped):
            try:
                direct.copy_range(0, 8 * DIRECT_PIECE, advance)
                direct.wait()
            finally:
                direct.close()  # raised BufferError before
    finally:
        os.close(direct_fd)
        os.close(source_fd)


def file_pages_mapped() -> int:
    """Bytes of files mapped into this process's memory (its RSS's file part)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


def test_a_direct_copy_lets_go_of_each_written_piece_of_its_map(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    """The writes map the source's pages into this process: each piece is let go of once
    written, so a copy of any size adds a few pieces to the RSS, not its whole size."""
    directory = disk_tmp_path or tmp_path
    source, target = directory / "source", directory / "target"
    sparse_file(source, 64 * MiB, {0: os.urandom(48 * MiB)})
    sparse_file(target, 64 * MiB, {})
    source_fd = os.open(source, os.O_RDONLY)
    direct_fd = open_direct(target)
    assert direct_fd is not None
    direct = DirectCopy(direct_fd, source_fd)
    try:
        before = file_pages_mapped()
        assert direct.copy_range(0, 48 * MiB, lambda _n: None) == 48 * MiB
        direct.wait()
        assert file_pages_mapped() - before < 3 * DIRECT_PIECE  # the map is still open
    finally:
        direct.close()
        os.close(direct_fd)
        os.close(source_fd)
    assert target.read_bytes()[: 48 * MiB] == source.read_bytes()[: 48 * MiB]


@pytest.mark.parametrize("cls", [bytes, memoryview])
def test_a_piece_is_zero_only_when_every_byte_is(cls: type) -> None:
    size = 512 * 1024
    assert sparse.is_zero(cls(bytes(size)))
    for at in (0, 63, 64, size // 2, size - 1):  # in the head, past it, at the very end
        piece = bytearray(size)
        piece[at] = 1
        assert not sparse.is_zero(cls(bytes(piece)))


def test_a_view_of_any_length_and_start_is_zero_only_when_every_byte_is() -> None:
    """The scan of a view ORs 8-byte words: the bytes past the last whole word, and a view
    that starts off a word's boundary in its buffer, are looked at too."""
    for size in (1, 7, 8, 70, 4099, 512 * 1024 + 5):
        for start in (0, 3):
            buffer = bytearray(start + size)
            assert sparse.is_zero(memoryview(buffer)[start:])
            for at in {0, size // 2, size - (size % 8 or 1), size - 1}:
                buffer[start + at] = 1
                assert not sparse.is_zero(memoryview(buffer)[start:]), (size, start, at)
                buffer[start + at] = 0


def test_zero_runs_are_whole_aligned_blocks_and_the_rest_is_every_byte_as_given() -> None:
    """Pieces of every length, at every offset, with a stray byte here and there: laid end
    to end, the runs cover them in order; a zero run holds only zeros and is whole blocks of
    the file, cut only at the ends of the write; a block cut by two pieces is zeros only
    when both parts are."""
    block = sparse.ZERO_BLOCK
    chosen = random.Random(19)
    lengths = [0, 1, 100, block - 3, block, 2 * block + 7, 5 * block]
    for _ in range(2000):
        position = chosen.randrange(4 * block)
        pieces = []
        for _ in range(chosen.randrange(6)):
            piece = bytearray(chosen.choice(lengths))
            for _ in range(chosen.randrange(3) if piece else 0):
                piece[chosen.randrange(len(piece))] = chosen.randrange(1, 256)
            pieces.append(bytes(piece))
        whole = b"".join(pieces)
        end = position + len(whole)
        done = position
        for at, length, views in sparse.split_zeros(pieces, position):
            assert at == done
            part = whole[at - position : at - position + length]
            if views:
                assert b"".join(views) == part
            else:
                assert part == bytes(length)
                assert at % block == 0 or at == position
                assert (at + length) % block == 0 or at + length == end
            done += length
        assert done == end
        # Every block that is all zeros in the write is in a zero run.
        data = list(sparse.data_runs(pieces, position))
        for first in range(position - position % block, end, block):
            lo, hi = max(first, position), min(first + block, end)
            if whole[lo - position : hi - position] == bytes(hi - lo):
                assert not any(a < hi and lo < b for a, b in data), (position, first)
