"""A read's pieces: several read (and decrypted) at once ahead of the one being sent, in
order, and none left running once the read is over. A write's pieces: several encrypted and
written at once, intact where they meet inside a sector, all durable before it ends."""

import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openhosting.storage.drive_files import IO_CHUNK, DriveFiles
from openhosting.storage.drive_transfers import READ_AHEAD, WRITE_AHEAD, DriveWriter, ReadPlan

WAIT = 1.5  # less than one barrier's time-out


class SlowCalls:
    """Wraps a drive's `read_at` or `write_at`: counts the calls running at once and the
    most seen; the first `together` calls wait for each other (a few seconds at most), so
    that all the pieces a pipeline handles at once are seen running together."""

    def __init__(
        self,
        call: Callable[[int, Any], Any],
        together: int,
        events: list[str] | None = None,
    ) -> None:
        self._call = call
        self._lock = threading.Lock()
        self._together_count = together
        self.calls = self.running = self.most = 0
        self._together = threading.Barrier(together)
        self._events = events if events is not None else []

    def __call__(self, offset: int, argument: Any) -> Any:
        with self._lock:
            self.calls += 1
            first = self.calls <= self._together_count
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if first:
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._together.wait(timeout=2)
            return self._call(offset, argument)
        finally:
            with self._lock:
                self.running -= 1
                self._events.append("call")


async def test_pieces_ahead_are_read_at_once_and_come_in_order(tmp_path: Path) -> None:
    files = DriveFiles(tmp_path)
    drive = "0b0c0d0e-0000-4000-8000-000000000001"
    size = (READ_AHEAD + 3) * IO_CHUNK + 1234
    key = files.create_encrypted(drive, size, b"secret")
    expected = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    with files.open(drive, key) as drive_io:
        drive_io.write_at(0, expected)
    opened = files.open(drive, key)
    slow = SlowCalls(opened.io.read_at, READ_AHEAD + 1)
    opened.io.read_at = slow
    plan = ReadPlan(drive, opened, 5, size - 5)
    started = time.monotonic()
    try:
        received = b"".join([bytes(chunk) async for chunk in plan.chunks()])
    finally:
        plan.close()
    assert received == expected[5:]
    # One piece read at a time (the old pipeline) would wait out every barrier instead.
    assert slow.most == READ_AHEAD + 1
    assert time.monotonic() - started < WAIT
    assert slow.running == 0


async def test_write_pieces_go_two_at_once_land_intact_and_are_synced_before_the_end(
    tmp_path: Path,
) -> None:
    files = DriveFiles(tmp_path)
    drive = "0b0c0d0e-0000-4000-8000-000000000002"
    offset = 777  # inside a sector: pieces meet inside sectors, read-modify-written
    size = offset + (WRITE_AHEAD + 2) * IO_CHUNK + IO_CHUNK // 2 + 333
    key = files.create_encrypted(drive, size, b"secret")
    data = random.Random(2).randbytes(size - offset)
    opened = files.open(drive, key)
    events: list[str] = []
    slow = SlowCalls(opened.io.write_at, WRITE_AHEAD, events)
    opened.io.write_at = slow
    real_sync = opened.io.sync

    def sync() -> None:
        events.append("sync")
        real_sync()

    opened.io.sync = sync
    closed: list[int | None] = []
    writer = DriveWriter(drive, opened, offset, size, closed.append)
    started = time.monotonic()
    for at in range(0, len(data), 1 << 20):
        await writer.write(data[at : at + (1 << 20)])
    assert await writer.finish() == len(data)
    assert time.monotonic() - started < WAIT * 2
    assert slow.most == WRITE_AHEAD  # one piece at a time would wait out the barrier
    assert events[-1] == "sync" and events.count("sync") == 1
    assert closed == [len(data)]
    with files.open(drive, key) as drive_io:
        assert drive_io.read_at(0, size) == bytes(offset) + data


def _drive_with_data_and_holes(tmp_path: Path) -> tuple[DriveFiles, str, bytes, bytes]:
    """An encrypted drive of several pieces: written bytes, a never-written gap of two
    pieces and more, written bytes again, then a never-written tail. Returns the files, the
    drive, its key and its expected bytes."""
    files = DriveFiles(tmp_path)
    drive = "0b0c0d0e-0000-4000-8000-000000000002"
    size = (READ_AHEAD + 5) * IO_CHUNK + 1234
    key = files.create_encrypted(drive, size, b"secret")
    expected = bytearray(size)
    rng = random.Random(20)
    with files.open(drive, key) as drive_io:
        for start, length in ((0, IO_CHUNK + 700), (4 * IO_CHUNK - 300, IO_CHUNK + 1000)):
            data = rng.randbytes(length)
            drive_io.write_at(start, data)
            expected[start : start + length] = data
    return files, drive, key, bytes(expected)


async def test_lent_pieces_are_the_drives_bytes_for_any_range_holes_and_all(
    tmp_path: Path,
) -> None:
    files, drive, key, expected = _drive_with_data_and_holes(tmp_path)
    size = len(expected)
    # Unaligned starts and ends, a range within one sector, one ending at the drive's end:
    # a buffer that held data before must read as zeros where nothing was written.
    for offset, count in ((0, size), (5, size - 5), (511, 3 * IO_CHUNK + 2), (1000, 24), (0, 1)):
        plan = ReadPlan(drive, files.open(drive, key), offset, count)
        try:
            received = b"".join([bytes(piece) async for piece in plan.lent_pieces()])
        finally:
            plan.close()
        assert received == expected[offset : offset + count], (offset, count)


async def test_lent_pieces_of_an_empty_range_are_none(tmp_path: Path) -> None:
    files, drive, key, _ = _drive_with_data_and_holes(tmp_path)
    for offset in (0, 4096, 1000):  # on a sector's start or not
        plan = ReadPlan(drive, files.open(drive, key), offset, 0)
        try:
            assert [bytes(piece) async for piece in plan.lent_pieces()] == []
        finally:
            plan.close()


async def test_lent_pieces_reuse_a_few_buffers_each_lent_until_the_piece_after_next(
    tmp_path: Path,
) -> None:
    files, drive, key, expected = _drive_with_data_and_holes(tmp_path)
    plan = ReadPlan(drive, files.open(drive, key), 0, len(expected))
    buffers: set[int] = set()
    kept: list[tuple[memoryview, bytes]] = []  # each piece with a copy taken when it came
    try:
        async for piece in plan.lent_pieces():
            buffers.add(id(piece.obj))
            kept.append((piece, bytes(piece)))
            if len(kept) >= 2:  # the piece before this one is still intact
                assert kept[-2][0] == kept[-2][1]
    finally:
        plan.close()
    assert len(kept) == len(expected) // IO_CHUNK + 1
    assert len(buffers) == READ_AHEAD + 2  # not one per piece
    assert b"".join(copy for _, copy in kept) == expected


async def test_lent_pieces_wait_for_the_pieces_being_read_when_the_read_stops(
    tmp_path: Path,
) -> None:
    files, drive, key, expected = _drive_with_data_and_holes(tmp_path)
    opened = files.open(drive, key)
    slow = SlowCalls(opened.io.read_sectors_into, READ_AHEAD + 1)
    opened.io.read_sectors_into = slow  # type: ignore[method-assign]
    plan = ReadPlan(drive, opened, 0, len(expected))
    pieces = plan.lent_pieces()
    try:
        first = await anext(pieces)
        assert bytes(first) == expected[:IO_CHUNK]
        await pieces.aclose()  # the client went away: the pieces ahead end before close
        assert slow.running == 0
    finally:
        plan.close()
