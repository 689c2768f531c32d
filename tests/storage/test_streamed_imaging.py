"""Imaging through the storage seam (storage/streamed_imaging.py) on real drive files, with
this host's storage on both sides (the cluster test runs it with an agent's): the contract of
the local pipelines, plain and encrypted on either side."""

import asyncio
import gzip
import os
import threading
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from openhosting.storage import imaging
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.imaging import Endpoint, ImagingStopped, Tracker
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.streamed_imaging import ZERO_RUN, StreamEnd, stream_image

MiB = 1024 * 1024
KINDS = ["plain", "encrypted"]
PAIRS = [(src, dst) for src in KINDS for dst in KINDS]
T = TypeVar("T")


def offload(work: Callable[[], T], /) -> Awaitable[T]:
    return asyncio.to_thread(work)


class Storage:
    """This host's storage over a temporary directory, and its drives as stream ends."""

    def __init__(self, root: Path) -> None:
        self.storage = LocalDriveStorage(DriveTiers({"disk": root}))
        self.root = root

    async def make(self, name: str, size: int, kind: str) -> StreamEnd:
        passphrase = None if kind == "plain" else b"streamed-imaging-test"
        key = await self.storage.create(name, "disk", size, passphrase)
        return StreamEnd(self.storage, name, "disk", key, size)

    async def write(self, end: StreamEnd, offset: int, data: bytes) -> None:
        write = self.storage.open_write(
            DriveBytes(end.drive, "disk", end.master_key), offset, end.size, False, lambda _: None
        )
        await write.write(data)
        await write.finish()

    async def read(self, end: StreamEnd) -> bytes:
        read = self.storage.open_read(
            DriveBytes(end.drive, "disk", end.master_key), 0, end.size, lambda: None
        )
        try:
            return b"".join([bytes(chunk) async for chunk in read.chunks()])
        finally:
            read.close()

    def allocated(self, end: StreamEnd) -> int:
        return os.stat(self.storage.disk_path(end.drive, "disk")).st_blocks * 512


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "drives")


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
async def test_a_copy_fills_dst_with_src_and_zeros_past_it(
    storage: Storage, src_kind: str, dst_kind: str
) -> None:
    size = 2 * ZERO_RUN + 3 * MiB
    src = await storage.make("11111111-1111-4111-8111-111111111111", size, src_kind)
    dst = await storage.make("22222222-2222-4222-8222-222222222222", size + MiB, dst_kind)
    head, tail = os.urandom(MiB), os.urandom(MiB)
    await storage.write(src, 0, head)
    await storage.write(src, size - MiB, tail)
    await storage.write(dst, size, os.urandom(MiB))  # past SRC's end: zeros after
    tracker = Tracker()
    await stream_image("", src, dst, tracker, offload)
    assert await storage.read(dst) == head + bytes(size - 2 * MiB) + tail + bytes(MiB)
    assert tracker.total == tracker.done == size
    if dst_kind == "plain":  # the long zero run left as a hole
        assert storage.allocated(dst) < 4 * MiB


async def test_a_copy_into_a_smaller_drive_is_cut_at_its_size(storage: Storage) -> None:
    src = await storage.make("11111111-1111-4111-8111-111111111111", 4 * MiB, "plain")
    dst = await storage.make("22222222-2222-4222-8222-222222222222", MiB + 5, "encrypted")
    data = os.urandom(4 * MiB)
    await storage.write(src, 0, data)
    await stream_image("", src, dst, Tracker(), offload)
    assert (await storage.read(dst))[: MiB + 5] == data[: MiB + 5]


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
async def test_gzip_then_gunzip_gives_the_bytes_back(
    storage: Storage, src_kind: str, dst_kind: str
) -> None:
    size = 6 * MiB
    src = await storage.make("11111111-1111-4111-8111-111111111111", size, src_kind)
    packed = await storage.make("22222222-2222-4222-8222-222222222222", size, dst_kind)
    back = await storage.make("33333333-3333-4333-8333-333333333333", size, src_kind)
    data = os.urandom(2 * MiB) + bytes(2 * MiB) + os.urandom(2 * MiB)
    await storage.write(src, 0, data)
    await stream_image("gzip", src, packed, Tracker(), offload)
    stream = await storage.read(packed)
    assert zlib.decompressobj(wbits=31).decompress(stream) == data  # then zeros
    await stream_image("gunzip", packed, back, Tracker(), offload)  # the padding ignored
    assert await storage.read(back) == data


async def test_gunzip_of_no_gzip_stream_fails(storage: Storage) -> None:
    src = await storage.make("11111111-1111-4111-8111-111111111111", MiB, "plain")
    dst = await storage.make("22222222-2222-4222-8222-222222222222", MiB, "plain")
    await storage.write(src, 0, b"not gzip" * 100)
    with pytest.raises(GzipStreamError, match="not a gzip stream"):
        await stream_image("gunzip", src, dst, Tracker(), offload)
    cut = gzip.compress(os.urandom(100_000))[:-20]
    await storage.write(src, 0, cut + os.urandom(MiB - len(cut)))
    with pytest.raises(GzipStreamError):
        await stream_image("gunzip", src, dst, Tracker(), offload)


async def test_a_stop_request_ends_the_job_half_way(storage: Storage) -> None:
    size = 32 * MiB
    src = await storage.make("11111111-1111-4111-8111-111111111111", size, "plain")
    dst = await storage.make("22222222-2222-4222-8222-222222222222", size, "plain")
    await storage.write(src, 0, os.urandom(size))
    stop = threading.Event()
    reports: list[int] = []

    def report(done: int, total: int) -> None:
        reports.append(done)
        if done:
            stop.set()

    # Paced at 16 MiB/s, reported every 0.1 s: asked to stop after its first bytes.
    tracker = Tracker(report, stop=stop, max_rate=16 * MiB, interval=0.1)
    with pytest.raises(ImagingStopped):
        await stream_image("", src, dst, tracker, offload)
    assert 0 < tracker.done < size


async def test_dst_is_emptied_by_the_callers_empty_when_given(storage: Storage) -> None:
    """A DST of this host is emptied by punching holes (its file keeps its size for a read
    under way), not by the storage's resize, which cuts the file to nothing first."""
    src = await storage.make("11111111-1111-4111-8111-111111111111", 2 * MiB, "plain")
    dst = await storage.make("22222222-2222-4222-8222-222222222222", 2 * MiB, "plain")
    await storage.write(src, 0, os.urandom(MiB))
    await storage.write(dst, MiB, os.urandom(MiB))

    async def no_resize(*_args: object) -> None:
        raise AssertionError("DST resized")

    path = storage.storage.disk_path(dst.drive, "disk")
    punched: list[int] = []

    def punch() -> None:
        with storage.storage.files_of(dst.drive, "disk").open(dst.drive, None) as drive_io:
            imaging.empty(Endpoint.of(drive_io, dst.size))
        punched.append(os.stat(path).st_size)

    storage.storage.resize = no_resize  # type: ignore[method-assign]
    await stream_image("", src, dst, Tracker(), offload, lambda: offload(punch))
    assert punched == [2 * MiB]
    assert (await storage.read(dst))[MiB:] == bytes(MiB)
