"""A staged write (a gzip body) on real drive files: its body is inflated, staged, applied and
synced by a worker thread, never on the event loop; pieces that arrive while the thread is
busy are handled by the same job, the end included (one thread hop); the body queued for the
thread is bounded; a body that proves bad, or a write given up while the thread works,
leaves the drive as it was."""

import asyncio
import gzip
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.api.content_coding import GzipStreamDecoder
from openhosting.errors import UsageError
from openhosting.storage.drive_files import DriveFiles, OpenDrive
from openhosting.storage.drive_transfers import QUEUED_BOUND, StagedDriveWriter
from openhosting.storage.write_stage import WriteStage

DRIVE = "0b0c0d0e-0000-4000-8000-0000000000a1"
MIB = 1 << 20
SIZE = 8 * MIB
WAIT = 5.0  # seconds a test waits for a thread at most


class HeldDecoder(GzipStreamDecoder):
    """The real decoder, whose first `feed` waits until `release` is set; it records the
    threads it runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.feeding = threading.Event()
        self.threads: set[int] = set()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.threads.add(threading.get_ident())
        self.feeding.set()
        if not self.release.wait(WAIT):
            raise AssertionError("never released")
        return super().feed(data)


def opened_drive(tmp_path: Path) -> tuple[DriveFiles, OpenDrive]:
    files = DriveFiles(tmp_path / "drives")
    files.create_plain(DRIVE, SIZE)
    return files, files.open(DRIVE, None)


def writer_of(
    files: DriveFiles, opened: OpenDrive, offset: int, decoder: GzipStreamDecoder
) -> tuple[StagedDriveWriter, list[int | None]]:
    closed: list[int | None] = []
    stage = WriteStage(opened.io, files.root, offset)
    return StagedDriveWriter(DRIVE, opened, stage, SIZE - offset, closed.append, decoder), closed


def pieces_of(body: bytes, piece: int) -> list[bytes]:
    return [body[at : at + piece] for at in range(0, len(body), piece)]


def drive_bytes(files: DriveFiles) -> bytes:
    return (files.root / f"{DRIVE}.img").read_bytes()


async def test_a_body_queued_while_the_thread_works_is_inflated_applied_and_synced_in_one_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, opened = opened_drive(tmp_path)
    decoder = HeldDecoder()
    writer, closed = writer_of(files, opened, MIB, decoder)
    jobs: list[int] = []
    real_work = StagedDriveWriter._work

    def counted_work(self: StagedDriveWriter) -> None:
        jobs.append(threading.get_ident())
        real_work(self)

    monkeypatch.setattr(StagedDriveWriter, "_work", counted_work)
    synced: list[int] = []
    real_sync = opened.io.sync

    def recorded_sync() -> None:
        synced.append(threading.get_ident())
        real_sync()

    opened.io.sync = recorded_sync  # type: ignore[method-assign]
    data = os.urandom(3 * MIB)
    for piece in pieces_of(gzip.compress(data, compresslevel=1), 256 * 1024):
        await writer.write(piece)  # queued: the thread holds the first piece
    finishing = asyncio.ensure_future(writer.finish())
    await asyncio.sleep(0.05)
    assert not finishing.done()
    decoder.release.set()
    assert await asyncio.wait_for(finishing, WAIT) == len(data)

    loop_thread = threading.get_ident()
    assert len(jobs) == 1  # every piece and the end: one hop to the thread
    assert decoder.threads == set(jobs) == set(synced) and loop_thread not in jobs
    assert closed == [len(data)]
    on_drive = drive_bytes(files)
    assert on_drive[MIB : MIB + len(data)] == data
    assert on_drive[:MIB] == bytes(MIB)


async def test_the_body_queued_for_the_thread_is_bounded(tmp_path: Path) -> None:
    files, opened = opened_drive(tmp_path)
    decoder = HeldDecoder()
    writer, _ = writer_of(files, opened, 0, decoder)
    body = gzip.compress(os.urandom(QUEUED_BOUND + 2 * MIB), compresslevel=1)
    pieces = pieces_of(body, 256 * 1024)
    index = -1
    while True:  # until a write waits (bounded: the pieces run out)
        index += 1
        writing = asyncio.ensure_future(writer.write(pieces[index]))
        await asyncio.sleep(0.01)
        if not writing.done():
            break
    sent = sum(map(len, pieces[: index + 1]))
    assert QUEUED_BOUND < sent <= QUEUED_BOUND + 2 * len(pieces[0])
    await asyncio.sleep(0.05)
    assert not writing.done()  # the request waits for the thread, holding the rest back
    decoder.release.set()
    await asyncio.wait_for(writing, WAIT)
    for piece in pieces[index + 1 :]:
        await writer.write(piece)
    assert await writer.finish() == QUEUED_BOUND + 2 * MIB


@pytest.mark.parametrize("damage", ["bad data", "crc flipped"])
async def test_a_bad_body_found_by_the_thread_is_refused_with_the_drive_unchanged(
    tmp_path: Path, damage: str
) -> None:
    files, opened = opened_drive(tmp_path)
    writer, closed = writer_of(files, opened, 0, GzipStreamDecoder())
    body = bytearray(gzip.compress(os.urandom(2 * MIB), compresslevel=1))
    if damage == "bad data":
        body[100:200] = bytes(100)
    else:
        body[-8] ^= 0xFF
    with pytest.raises(UsageError, match="Invalid gzip body"):
        try:
            for piece in pieces_of(bytes(body), 64 * 1024):
                await writer.write(piece)
            await writer.finish()
        except UsageError:
            await writer.abort()
            raise
    assert closed == [None]
    assert drive_bytes(files) == bytes(SIZE)


async def test_a_write_given_up_while_the_thread_works_waits_for_it_and_changes_nothing(
    tmp_path: Path,
) -> None:
    files, opened = opened_drive(tmp_path)
    decoder = HeldDecoder()
    writer, closed = writer_of(files, opened, 0, decoder)
    body = gzip.compress(os.urandom(2 * MIB), compresslevel=1)
    for piece in pieces_of(body, 256 * 1024):
        await writer.write(piece)
    assert await asyncio.to_thread(decoder.feeding.wait, WAIT)
    aborting = asyncio.ensure_future(writer.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()  # the thread holds a piece: the stage is not dropped under it
    decoder.release.set()
    await asyncio.wait_for(aborting, WAIT)
    assert closed == [None]
    assert drive_bytes(files) == bytes(SIZE)
    assert os.listdir(files.root) == [f"{DRIVE}.img"]
