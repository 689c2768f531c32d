"""The upload tool's path: 5 MiB gzip chunks POSTed one after another to
`/drives/D/write/OFFSET` over one keep-alive connection, against the same decompress + pwrite +
fdatasync per chunk done in-process without HTTP. The chunks are compressed beforehand, so
compression is not measured. Goal: ≥ 0.8×."""

import http.client
import os
import time
from dataclasses import dataclass
from pathlib import Path

from isal import igzip, isal_zlib

from bench.drive_data import (
    MIB,
    ROUNDS,
    bench_size,
    create_drive,
    data_blocks,
    destroy_drive,
    drop_dirty_pages,
    throughput,
)
from bench.harness import Daemon, report, running_daemon, work_directory

CHUNK = 5 * MIB
GZIP_WBITS = 31


@dataclass(frozen=True)
class Chunk:
    offset: int  # where its decompressed bytes go on the drive
    at: int  # where its gzip bytes are in the chunk file
    length: int  # of its gzip bytes


def make_gzip_chunks(path: Path, size: int) -> list[Chunk]:
    """Cut the test data into 5 MiB pieces, gzip each (one member per chunk, as the upload
    tool sends them) and store them back to back in one file."""
    chunks, pending, offset, at = [], bytearray(), 0, 0
    with path.open("wb") as file:
        for block in data_blocks(size):
            pending += block
            while len(pending) >= CHUNK or (pending and offset + len(pending) == size):
                piece, pending = bytes(pending[:CHUNK]), pending[CHUNK:]
                packed = igzip.compress(piece, 3)  # isal's best level
                file.write(packed)
                chunks.append(Chunk(offset, at, len(packed)))
                offset, at = offset + len(piece), at + len(packed)
    return chunks


def upload_seconds(daemon: Daemon, drive: str, chunk_file: Path, chunks: list[Chunk]) -> float:
    headers = {
        "Authorization": daemon.auth_header,
        "Content-Encoding": "gzip",
        "Content-Type": "application/octet-stream",
    }
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    source = os.open(chunk_file, os.O_RDONLY)
    try:
        started = time.perf_counter()
        for chunk in chunks:
            body = os.pread(source, chunk.length, chunk.at)
            connection.request("POST", f"/drives/{drive}/write/{chunk.offset}", body, headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 204:
                raise RuntimeError(f"chunk at {chunk.offset}: {response.status} {answer!r}")
        return time.perf_counter() - started
    finally:
        os.close(source)
        connection.close()


def in_process_seconds(target: Path, size: int, chunk_file: Path, chunks: list[Chunk]) -> float:
    """The same work without HTTP, into a fresh sparse file like a new drive."""
    source = os.open(chunk_file, os.O_RDONLY)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        started = time.perf_counter()
        for chunk in chunks:
            raw = isal_zlib.decompress(os.pread(source, chunk.length, chunk.at), GZIP_WBITS)
            view = memoryview(raw)
            position = chunk.offset
            while view:
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written
            os.fdatasync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        os.close(source)
        target.unlink()


def run() -> float:
    size = bench_size()
    with work_directory("drive-upload") as work_dir, running_daemon(work_dir) as daemon:
        chunk_file = work_dir / "chunks.gz"
        chunks = make_gzip_chunks(chunk_file, size)
        ours, anchor = [], []
        for _ in range(ROUNDS):
            drive = create_drive(daemon, size, "none")
            drop_dirty_pages()
            ours.append(upload_seconds(daemon, drive, chunk_file, chunks))
            destroy_drive(daemon, drive)
            drop_dirty_pages()
            anchor.append(in_process_seconds(work_dir / "target.img", size, chunk_file, chunks))
        print(f"  {len(chunks)} chunks, {chunk_file.stat().st_size >> 20} MiB of gzip", flush=True)
    return report(
        f"drive upload, 5 MiB gzip chunks, {size >> 20} MiB", throughput(size, min(ours)),
        "isal gunzip + pwrite + fdatasync in-process", throughput(size, min(anchor)), "MB/s",
        "≥ 0.8",
    )  # fmt: skip
