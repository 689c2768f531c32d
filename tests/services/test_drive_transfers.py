"""A read's pieces: several read (and decrypted) at once ahead of the one being sent, in
order, and none left running once the read is over."""

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from openhosting.services.drive_transfers import READ_AHEAD, ReadPlan
from openhosting.storage.drive_files import IO_CHUNK, DriveFiles

WAIT = 1.5  # less than one barrier's time-out


class SlowReads:
    """Wraps a drive's `read_at`: counts the calls running at once and the most seen; the
    first `READ_AHEAD` + 1 calls wait for each other (a few seconds at most), so that all
    the pieces a pipeline reads at once are seen running together."""

    def __init__(self, read_at: Callable[[int, int], bytes | bytearray]) -> None:
        self._read_at = read_at
        self._lock = threading.Lock()
        self.calls = self.running = self.most = 0
        self._together = threading.Barrier(READ_AHEAD + 1)

    def __call__(self, offset: int, length: int) -> bytes | bytearray:
        with self._lock:
            self.calls += 1
            first = self.calls <= READ_AHEAD + 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if first:
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._together.wait(timeout=2)
            return self._read_at(offset, length)
        finally:
            with self._lock:
                self.running -= 1


async def test_pieces_ahead_are_read_at_once_and_come_in_order(tmp_path: Path) -> None:
    files = DriveFiles(tmp_path)
    drive = "0b0c0d0e-0000-4000-8000-000000000001"
    size = (READ_AHEAD + 3) * IO_CHUNK + 1234
    key = files.create_encrypted(drive, size, b"secret")
    expected = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    with files.open(drive, key) as drive_io:
        drive_io.write_at(0, expected)
    opened = files.open(drive, key)
    slow = SlowReads(opened.io.read_at)
    opened.io.read_at = slow  # type: ignore[method-assign]
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
