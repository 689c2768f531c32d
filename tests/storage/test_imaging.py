"""Imaging pipelines on real drive files, plain and encrypted on either side."""

import errno
import gzip as gzip_module
import mmap
import os
import queue
import shutil
import subprocess
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from isal import isal_zlib

from openhosting.storage import imaging
from openhosting.storage.drive_files import DriveFiles, OpenDrive
from openhosting.storage.gzip_stream import GzipMembers, GzipStreamError
from openhosting.storage.imaging import CHUNK, Endpoint, ImagingStopped, Tracker
from openhosting.storage.sparse import data_extents
from tests.disk_tmp import cached_bytes

MiB = 1024 * 1024
PASSPHRASE = b"imaging-test-passphrase"
KINDS = ["plain", "encrypted"]
PAIRS = [(src, dst) for src in KINDS for dst in KINDS]
# Not a multiple of a sector, a block, CHUNK or the inflater's slices.
ODD_SIZE = 2 * CHUNK + 1_234_567


def gunzip_stream(data: bytes) -> bytes:
    """The gzip stream at the start of `data`, decompressed; what follows it is ignored."""
    return zlib.decompressobj(wbits=31).decompress(data)


class Drives:
    """Drive files in a temporary directory, opened for I/O."""

    def __init__(self, root: Path) -> None:
        self.files = DriveFiles(root)
        self.keys: dict[str, bytes | None] = {}
        self._open: list[OpenDrive] = []

    def make(self, name: str, size: int, kind: str) -> Endpoint:
        if kind == "plain":
            self.files.create_plain(name, size)
            self.keys[name] = None
        else:
            self.keys[name] = self.files.create_encrypted(name, -(-size // 512) * 512, PASSPHRASE)
        return self.open(name, size)

    def open(self, name: str, size: int) -> Endpoint:
        opened = self.files.open(name, self.keys[name])
        self._open.append(opened)
        return Endpoint.of(opened.io, size)

    def close(self) -> None:
        for opened in self._open:
            opened.io.close()


@pytest.fixture
def drives(tmp_path: Path) -> Iterator[Drives]:
    made = Drives(tmp_path / "drives")
    yield made
    made.close()


def fill(drive: Endpoint, pieces: dict[int, bytes]) -> None:
    for offset, data in pieces.items():
        drive.io.write_at(offset, data)


def content(drive: Endpoint) -> bytes:
    return drive.io.read_at(0, drive.size)


def scattered(size: int) -> dict[int, bytes]:
    """Data at the start, across CHUNK boundaries, written zeros, and at the very end."""
    return {
        0: os.urandom(1000),
        CHUNK - 700: os.urandom(1400),
        CHUNK + MiB: bytes(MiB),  # written zeros: data, not a hole
        2 * CHUNK - 3: os.urandom(MiB),
        size - 77: os.urandom(77),
    }


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
def test_copy_gives_dst_the_bytes_of_src_and_zeros_where_dst_had_data(
    drives: Drives, src_kind: str, dst_kind: str
) -> None:
    src = drives.make("src", ODD_SIZE, src_kind)
    dst = drives.make("dst", ODD_SIZE, dst_kind)
    fill(src, scattered(ODD_SIZE))
    fill(dst, {5 * MiB: b"old" * 1000, ODD_SIZE - 10: b"old bytes!"})
    imaging.copy(src, dst, Tracker())
    assert content(dst) == content(src)


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
def test_copy_cuts_what_does_not_fit_and_leaves_the_rest_zero(
    drives: Drives, src_kind: str, dst_kind: str
) -> None:
    big = drives.make("big", ODD_SIZE, src_kind)
    fill(big, scattered(ODD_SIZE))
    small = drives.make("small", CHUNK + 5, dst_kind)
    imaging.copy(big, small, Tracker())
    assert content(small) == content(big)[: CHUNK + 5]
    larger = drives.make("larger", ODD_SIZE + 3 * MiB, dst_kind)
    fill(larger, {ODD_SIZE + MiB: b"stale"})
    imaging.copy(big, larger, Tracker())
    assert content(larger) == content(big) + bytes(3 * MiB)


def test_plain_copy_moves_only_data(drives: Drives) -> None:
    src = drives.make("src", 4096 * MiB, "plain")
    fill(src, {100 * MiB: os.urandom(2 * MiB), 3000 * MiB: os.urandom(MiB)})
    dst = drives.make("dst", 4096 * MiB, "plain")
    reports: list[tuple[int, int]] = []
    started = time.monotonic()
    imaging.copy(src, dst, Tracker(lambda done, total: reports.append((done, total))))
    assert time.monotonic() - started < 5  # a dense copy would move 4 GiB
    assert os.stat(dst.io.path).st_blocks * 512 < 8 * MiB
    for offset, length in ((100 * MiB, 2 * MiB), (3000 * MiB, MiB), (0, MiB)):
        assert dst.io.read_at(offset, length) == src.io.read_at(offset, length)
    assert reports and reports[0][1] < 8 * MiB  # progress counts data bytes, not the size


def test_plain_copy_on_a_disk_goes_past_the_page_cache_and_keeps_every_byte(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    made = Drives((disk_tmp_path or tmp_path) / "drives")
    try:
        size = 64 * MiB + 777  # the last data block is cut by the end: written the usual way
        src = made.make("src", size, "plain")
        fill(src, {0: os.urandom(3 * MiB + 5), 20 * MiB: os.urandom(9 * MiB)})
        fill(src, {size - 700: os.urandom(700)})
        dst = made.make("dst", size, "plain")
        fill(dst, {40 * MiB: b"old" * 1000})
        imaging.copy(src, dst, Tracker())
        if disk_tmp_path is not None:
            # Written with O_DIRECT: straight to the disk, durable three times sooner there
            # than through the page cache; only the cut last block went through it.
            assert cached_bytes(dst.io.path) <= 2 * 4096
        assert content(dst) == content(src)
    finally:
        made.close()


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
def test_gunzip_of_gzip_is_the_original(drives: Drives, src_kind: str, dst_kind: str) -> None:
    src = drives.make("src", ODD_SIZE, src_kind)
    fill(src, scattered(ODD_SIZE))
    packed = drives.make("packed", ODD_SIZE, dst_kind)
    imaging.gzip(src, packed, Tracker())
    assert gunzip_stream(content(packed)) == content(src)
    unpacked = drives.make("unpacked", ODD_SIZE, src_kind)
    fill(unpacked, {MiB: b"stale" * 100})
    imaging.gunzip(packed, unpacked, Tracker())
    assert content(unpacked) == content(src)


def test_gunzip_ignores_padding_and_reads_every_member(drives: Drives) -> None:
    parts = [os.urandom(300_000), bytes(CHUNK + 3), b"tail"]
    stream = b"".join(gzip_module.compress(part, compresslevel=1) for part in parts)
    src = drives.make("src", len(stream) + 5 * MiB, "plain")
    fill(src, {0: stream, len(stream) + MiB: b"junk after the stream"})
    dst = drives.make("dst", 2 * CHUNK, "encrypted")
    imaging.gunzip(src, dst, Tracker())
    raw = b"".join(parts)
    assert content(dst) == raw + bytes(2 * CHUNK - len(raw))


def test_gunzip_cuts_output_at_the_end_of_dst(drives: Drives) -> None:
    raw = os.urandom(3 * MiB)
    stream = gzip_module.compress(raw)
    src = drives.make("src", len(stream), "plain")
    fill(src, {0: stream})
    dst = drives.make("dst", MiB + 1, "plain")
    imaging.gunzip(src, dst, Tracker())
    assert content(dst) == raw[: MiB + 1]


@pytest.mark.parametrize(
    "stored",
    [b"this drive holds no gzip stream", b"", gzip_module.compress(os.urandom(MiB))[:-9]],
    ids=["not-gzip", "empty", "truncated"],  # the same in every process (pytest-xdist)
)
def test_gunzip_of_what_is_not_a_whole_gzip_stream_fails(drives: Drives, stored: bytes) -> None:
    src = drives.make("src", 2 * MiB, "plain")
    fill(src, {0: stored})
    dst = drives.make("dst", 4 * MiB, "plain")
    with pytest.raises(GzipStreamError):
        imaging.gunzip(src, dst, Tracker())


def test_a_slow_write_does_not_hold_the_inflater_still(
    drives: Drives, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one chunk is being written (a busy shared disk), the next ones are taken, up to
    WRITES_QUEUED, and every byte still lands in its place."""
    dst = drives.make("dst", (imaging.WRITES_QUEUED + 1) * CHUNK, "plain")
    release = threading.Event()
    write_chunk = imaging._Writer._write_chunk

    def slow_first_write(writer: imaging._Writer, offset: int, filled: tuple[Any, int]) -> None:
        if offset == 0:
            release.wait(30)
        write_chunk(writer, offset, filled)

    monkeypatch.setattr(imaging._Writer, "_write_chunk", slow_first_write)
    chunks = [os.urandom(CHUNK) for _ in range(imaging.WRITES_QUEUED)]
    handed = threading.Event()
    with imaging._Writer(dst) as writer:

        def produce() -> None:
            for index, chunk in enumerate(chunks):
                buffer = writer.chunk_buffer()
                buffer[:] = chunk
                writer.write_chunk(index * CHUNK, buffer, CHUNK)
            handed.set()

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            taken = handed.wait(10)
        finally:
            release.set()
            producer.join(30)
        writer.finish()
    assert taken, "the writer took no further chunk while the first was being written"
    assert content(dst) == b"".join(chunks) + bytes(CHUNK)


def test_the_stream_never_touches_a_piece_it_has_handed_over(
    drives: Drives, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging thread lets go of each piece (releases its view) as soon as it is copied.
    On a busy machine that came before the stream had counted the piece, and the gunzip
    failed with an internal error (two encrypted gunzips at once in `make bench`): here every
    hand-over waits until the staging thread has let go of the piece."""
    handed_queue = queue.Queue

    class LetGoOfAtOnce(handed_queue):  # type: ignore[type-arg]
        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)
            deadline = time.monotonic() + 10
            while isinstance(item, memoryview) and time.monotonic() < deadline:
                try:
                    item.nbytes  # noqa: B018  # raises once the view is released
                except ValueError:
                    return
                time.sleep(0.001)

    monkeypatch.setattr(imaging.queue, "Queue", LetGoOfAtOnce)
    data = os.urandom(3 * MiB) + bytes(CHUNK) + os.urandom(MiB)
    src = drives.make("src", 2 * len(data), "plain")
    fill(src, {0: gzip_module.compress(data, compresslevel=1)})
    dst = drives.make("dst", len(data), "plain")
    imaging.gunzip(src, dst, Tracker())
    assert content(dst) == data


def test_a_failed_write_fails_the_pipeline(drives: Drives, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(3 * CHUNK)
    src = drives.make("src", 4 * CHUNK, "plain")
    fill(src, {0: gzip_module.compress(raw, compresslevel=1)})
    dst = drives.make("dst", len(raw), "plain")

    def full_disk(_writer: imaging._Writer, _offset: int, _filled: tuple[Any, int]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imaging._Writer, "_write_chunk", full_disk)
    with pytest.raises(OSError, match="No space"):
        imaging.gunzip(src, dst, Tracker())


@pytest.mark.parametrize("conversion", ["gzip", "gunzip"])
def test_the_next_source_piece_is_read_while_one_is_worked_on(
    drives: Drives, monkeypatch: pytest.MonkeyPatch, conversion: str
) -> None:
    """Reading (and decrypting) SRC leaves the inflating or compressing thread: the next
    piece is being read while the one before is worked on."""
    raw = os.urandom(2 * CHUNK + MiB)
    stored = gzip_module.compress(raw, compresslevel=1) if conversion == "gunzip" else raw
    src = drives.make("src", len(stored), "encrypted")
    fill(src, {0: stored})
    dst = drives.make("dst", len(raw) + MiB, "plain")
    reads: list[int] = []
    second_read = threading.Event()
    read_at = src.io.read_at

    def recording_read(offset: int, length: int) -> bytes | bytearray:
        reads.append(offset)
        if len(reads) == 2:
            second_read.set()
        return read_at(offset, length)

    monkeypatch.setattr(src.io, "read_at", recording_read)
    overlapped: list[bool] = []
    if conversion == "gunzip":
        feed = GzipMembers.feed

        def slow_feed(members: GzipMembers, data: bytes | memoryview) -> Iterator[bytes]:
            if not overlapped:
                overlapped.append(second_read.wait(10))
            return feed(members, data)

        monkeypatch.setattr(GzipMembers, "feed", slow_feed)
        imaging.gunzip(src, dst, Tracker())
        assert content(dst) == raw + bytes(MiB)
    else:
        compressobj = isal_zlib.compressobj

        class SlowCompressor:
            def __init__(self, *args: object) -> None:
                self._compressor = compressobj(*args)

            def compress(self, data: bytes) -> bytes:
                if not overlapped:
                    overlapped.append(second_read.wait(10))
                return self._compressor.compress(data)

            def flush(self) -> bytes:
                return self._compressor.flush()

        monkeypatch.setattr(isal_zlib, "compressobj", SlowCompressor)
        imaging.gzip(src, dst, Tracker())
        assert gunzip_stream(content(dst)) == raw
    assert overlapped == [True], "the second piece was read only after the first was done"


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils")
def test_qemu_sees_the_decompressed_bytes_on_an_encrypted_dst_zeros_included(
    drives: Drives, tmp_path: Path
) -> None:
    raw = os.urandom(MiB) + bytes(3 * MiB) + os.urandom(4096)
    src = drives.make("src", 6 * MiB, "plain")
    fill(src, {0: gzip_module.compress(raw)})
    dst = drives.make("dst", len(raw), "encrypted")
    imaging.gunzip(src, dst, Tracker())
    secret = tmp_path / "secret"
    secret.write_bytes(PASSPHRASE)
    out = tmp_path / "qemu-view.raw"
    subprocess.run(
        ["qemu-img", "convert", "--object", f"secret,id=sec0,file={secret}", "--image-opts",
         f"driver=luks,key-secret=sec0,file.filename={dst.io.path}", "-O", "raw", str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.read_bytes() == raw


def test_a_stop_request_ends_the_pipeline(drives: Drives) -> None:
    src = drives.make("src", 4 * CHUNK, "plain")
    fill(src, {0: os.urandom(4 * CHUNK)})
    dst = drives.make("dst", 4 * CHUNK, "encrypted")
    stop = threading.Event()

    def report(done: int, _total: int) -> None:
        if done:
            stop.set()

    with pytest.raises(ImagingStopped):
        imaging.copy(src, dst, Tracker(report, stop=stop, interval=0))


def test_the_rate_limit_holds_the_pace(drives: Drives) -> None:
    src = drives.make("src", 3 * MiB, "plain")
    fill(src, {0: os.urandom(3 * MiB)})
    dst = drives.make("dst", 3 * MiB, "plain")
    started = time.monotonic()
    imaging.gzip(src, dst, Tracker(max_rate=10 * MiB))
    assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize("dst_kind", ["plain", "encrypted"])
def test_a_destination_being_emptied_is_never_shorter_than_its_size(
    drives: Drives, dst_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DST may be read while it is imaged: a read promised its length, so the file must never
    be cut below it, not even for the instant of emptying it."""
    src = drives.make("src", ODD_SIZE, "encrypted")  # no reflink: DST is emptied, then filled
    dst = drives.make("dst", ODD_SIZE, dst_kind)
    fill(src, {0: b"new" * 1000})
    fill(dst, {0: b"old" * 1000, ODD_SIZE - 10: b"old bytes!"})
    file_size = os.stat(dst.io.path).st_size
    cuts: list[int] = []
    real_ftruncate, real_truncate = os.ftruncate, os.truncate

    def ftruncate(fd: int, length: int) -> None:
        cuts.append(length)
        real_ftruncate(fd, length)

    def truncate(path: object, length: int) -> None:
        cuts.append(length)
        real_truncate(path, length)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    monkeypatch.setattr(os, "truncate", truncate)
    imaging.copy(src, dst, Tracker())
    assert all(length >= file_size for length in cuts), cuts
    assert content(dst) == content(src)


def test_gunzip_on_a_disk_goes_past_the_page_cache_and_keeps_every_byte(
    disk_tmp_path: Path | None, tmp_path: Path
) -> None:
    made = Drives((disk_tmp_path or tmp_path) / "drives")
    try:
        original = os.urandom(5 * MiB) + bytes(CHUNK) + os.urandom(CHUNK + 3333)
        stored = gzip_module.compress(original, compresslevel=1)
        src = made.make("src", len(stored), "plain")
        fill(src, {0: stored})
        dst = made.make("dst", len(original) + 5000, "plain")
        fill(dst, {2 * MiB: b"old" * 1000})
        imaging.gunzip(src, dst, Tracker())
        if disk_tmp_path is not None:
            # Runs of data went with O_DIRECT; only their unaligned edges (a page each at
            # most, three runs here) went through the page cache.
            assert cached_bytes(dst.io.path) <= 6 * 4096
        assert content(dst) == original + bytes(5000)
        assert os.stat(dst.io.path).st_blocks * 512 < len(original) - CHUNK // 2  # zeros: holes
    finally:
        made.close()


class RecordingWriter:
    """Stands in for the writer thread: hands out staging buffers from a pool of two and
    keeps what a stream hands back in them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.buffers = [mmap.mmap(-1, CHUNK) for _ in range(2)]
        self.handed: list[int] = []

    def chunk_buffer(self) -> mmap.mmap:
        return self.buffers[len(self.chunks) % 2]

    def write_chunk(self, offset: int, buffer: mmap.mmap, length: int) -> None:
        self.handed.append(self.buffers.index(buffer))
        self.chunks.append((offset, bytes(buffer[:length])))


def test_a_stream_hands_on_whole_chunks_in_the_writers_staging_buffers() -> None:
    writer = RecordingWriter()
    size = 2 * CHUNK + 100
    came = [os.urandom(n) for n in (700_001, CHUNK, 3, CHUNK // 2, CHUNK)]
    with imaging._Stream(writer, size, Tracker()) as stream:  # type: ignore[arg-type]
        for data in came:
            stream.write(data)
        assert stream.full  # the last piece did not fit whole
        stream.close()
    assert [offset for offset, _ in writer.chunks] == [0, CHUNK, 2 * CHUNK]
    assert [len(chunk) for _, chunk in writer.chunks] == [CHUNK, CHUNK, 100]
    assert b"".join(chunk for _, chunk in writer.chunks) == b"".join(came)[:size]
    assert writer.handed == [0, 1, 0]  # the writer's own buffers, reused


class Piece(bytearray):
    """A piece of output that can be watched for being let go of."""


def test_a_stream_lets_go_of_a_piece_once_copied_not_once_its_chunk_is_whole() -> None:
    """Pieces held until their chunk was whole (32 MiB of them in flight) made the allocator
    give their memory back and fault it in again for the next ones: a gunzip took ~33,000
    page faults per GiB, a sixth of the inflater's time."""
    writer = RecordingWriter()
    with imaging._Stream(writer, 2 * CHUNK, Tracker()) as stream:  # type: ignore[arg-type]
        piece = Piece(os.urandom(MiB))
        expected = bytes(piece)
        watched = weakref.ref(piece)
        stream.write(piece)
        del piece
        deadline = time.monotonic() + 10
        while watched() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watched() is None, "the stream still holds a piece it has copied"
        assert writer.chunks == []  # its chunk is not whole yet
        stream.close()
    assert writer.chunks == [(0, expected)]


def test_a_staging_error_is_raised_in_the_streams_thread_and_its_thread_ends() -> None:
    class FailingWriter(RecordingWriter):
        def chunk_buffer(self) -> mmap.mmap:
            raise OSError(errno.ENOSPC, "No space left on device")

    failing = FailingWriter()
    with (
        pytest.raises(OSError, match="No space"),
        imaging._Stream(failing, 64 * CHUNK, Tracker()) as stream,  # type: ignore[arg-type]
    ):
        for _ in range(64):  # more pieces than the staging queue holds: no deadlock
            stream.write(bytes(MiB))
        stream.close()
    assert not pipeline_threads()


def test_a_plain_copy_where_direct_writes_are_refused_moves_its_data_in_the_kernel(
    drives: Drives, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses O_DIRECT: the data extents go by copy_file_range (no byte
    through our memory), the holes stay holes, and DST is SRC's bytes."""
    size = 48 * MiB + 5
    src = drives.make("src", size, "plain")
    fill(src, {3 * MiB: os.urandom(5 * MiB + 3), 40 * MiB: os.urandom(4096), size - 5: b"last!"})
    dst = drives.make("dst", size, "plain")
    fill(dst, {20 * MiB: b"old" * 1000})
    moved: list[int] = []
    real_copy_file_range = os.copy_file_range

    def copy_file_range(source: int, target: int, count: int, *offsets: int) -> int:
        done = real_copy_file_range(source, target, count, *offsets)
        moved.append(done)
        return done

    def through_memory(_src: Endpoint, _out: object, first: int, end: int, *_: object) -> None:
        assert first == end, "a data extent was copied through memory"

    monkeypatch.setattr(imaging, "open_direct", lambda _path: None)
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(imaging, "_copy_pieces", through_memory)
    imaging.copy(src, dst, Tracker())
    monkeypatch.undo()
    assert content(dst) == content(src)
    with open(src.io.path, "rb") as file:  # whole blocks of data, holes left out
        assert sum(moved) == sum(end - first for first, end in data_extents(file.fileno(), 0, size))
    assert os.stat(dst.io.path).st_blocks * 512 < 12 * MiB


def children() -> set[int]:
    """The processes this process started that still exist (zombies included). In a whole
    run a test worker also holds what earlier tests' fixtures started (a PostgreSQL, say):
    callers compare with what was there before."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        rest = text.rpartition(")")[2]  # "PID (NAME) STATE PPID ..."
        if int(rest.split()[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def pipeline_threads() -> list[str]:
    """The threads a pipeline starts (SRC's reader, DST's stager and writer) that still run."""
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(("imaging-read", "imaging-write", "imaging-stage"))
    ]


def test_gunzip_inflates_in_this_process_with_no_child_or_pipe(drives: Drives) -> None:
    """ISA-L inflates in the pipeline's own thread (it lets go of the GIL meanwhile) while
    its threads read SRC and write DST: no child inflater whose output would be copied out
    of a pipe."""
    raw = os.urandom(2 * CHUNK)
    src = drives.make("src", 4 * CHUNK, "plain")
    fill(src, {0: gzip_module.compress(raw, compresslevel=1)})
    dst = drives.make("dst", len(raw), "plain")
    seen: list[tuple[set[int], list[str]]] = []
    before = children()

    def report(done: int, _total: int) -> None:
        if done:  # the first report, before any byte moved, comes before the threads
            seen.append((children() - before, pipeline_threads()))

    imaging.gunzip(src, dst, Tracker(report, interval=0))
    assert seen, "no report while the job ran"
    assert not any(started for started, _ in seen), "a child process ran during the job"
    assert all(threads for _, threads in seen), "no reader or writer thread during the job"
    assert content(dst) == raw
    assert not pipeline_threads()


@pytest.mark.parametrize("fault", ["stopped", "damaged", "write-failed"])
def test_a_gunzip_that_ends_early_leaves_no_thread_running(
    drives: Drives, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    raw = os.urandom(3 * CHUNK)
    stored = bytearray(gzip_module.compress(raw, compresslevel=1))
    if fault == "damaged":
        stored[len(stored) // 2 : len(stored) // 2 + 64] = bytes(64)
    src = drives.make("src", len(stored) + MiB, "plain")
    fill(src, {0: bytes(stored)})
    dst = drives.make("dst", len(raw), "plain")
    stop = threading.Event()
    expected: type[Exception] = GzipStreamError
    if fault == "stopped":
        expected = ImagingStopped
    elif fault == "write-failed":
        expected = OSError

        def full_disk(_writer: imaging._Writer, _offset: int, _filled: tuple[Any, int]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(imaging._Writer, "_write_chunk", full_disk)

    def report(done: int, _total: int) -> None:
        if done and fault == "stopped":
            stop.set()

    before = children()
    with pytest.raises(expected):
        imaging.gunzip(src, dst, Tracker(report, stop=stop, interval=0))
    assert not pipeline_threads()
    assert not children() - before
