"""`openhosting-download [-c CHUNK] [-o OFFSET] [-p N] DRIVE FILE`: download a drive to a file.

Reads the drive's `size` from its info, prints `Downloading COUNT chunks of CHUNK bytes
starting at OFFSET: `, one `.` per chunk and ` completed`, as the original ElasticHosts tool
printed. Without `-o` it resumes from the local file's size rounded down to a whole chunk. The
last chunk is cut to the drive's exact size. On failure it prints `E`, and on standard error
the `-o …` that resumes the download.

Beyond the original: chunks are fetched `-p N` at a time (default 4) but written in order, so
the file never has a gap before its end and resuming from its size stays right even after a
`kill -9`; aligned chunks are written with O_DIRECT (see `OutputFile`); chunks of zeros past
the file's end become holes (a sparse file); on a terminal a progress bar replaces the dots;
`--verify` checks each chunk's SHA-256 against the drive's and fetches one that differs again.
A regular output file ends with exactly the drive's size. Into a regular file, `-o` may not
be past the file's end (the bytes between would be a hole, zeros the drive never held), and
what the file holds past `-o` is cut before the first chunk, so that the file never claims
more than the run wrote.
"""

import argparse
import ctypes
import errno
import functools
import mmap
import os
import stat
import sys
import threading

from openhosting.client.chunks import Chunk, Turns, is_zero, zeros
from openhosting.client.http_client import ApiClient, api_path
from openhosting.client.tool import client_from_environment, size_argument
from openhosting.client.transfer import (
    ChunkSpan,
    drive_size,
    exit_status,
    run_transfer,
    transfer_parser,
    transfer_tool_main,
)
from openhosting.client.verify import (
    local_hash,
    until_verified,
)
from openhosting.errors import FailedError, UsageError

# What O_DIRECT needs of offsets, lengths and buffer addresses: the largest logical block size
# in use (4 KiB disks), which also covers 512-byte ones.
DIRECT_ALIGNMENT = 4096


def regular_size(path: str) -> int | None:
    """The size of the regular file `path` (0 while there is none); None for anything else
    (a block device)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def resume_offset(path: str, chunk_size: int) -> int:
    """Where a download into `path` resumes: its size rounded down to a whole chunk."""
    size = regular_size(path) or 0
    return size - size % chunk_size


class OutputFile:
    """The file chunks are written to, in order; zero chunks past its end become holes.

    Whole aligned chunks are written with O_DIRECT, from the workers' page-aligned buffers
    straight to the disk: a download is written once and not read back soon, and through the
    page cache every 4 KiB page of it would be allocated, copied and later written back (the
    cost that made in-order writes the pipeline's ceiling). Anything unaligned, and files where
    the kernel refuses O_DIRECT (EINVAL), go through the page cache as usual.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            # Chunks land at their offsets: a pipe or a terminal takes no pwrite (ESPIPE),
            # which surfaced as a failed first chunk and a resume that fails the same way.
            os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError as error:
            os.close(self._fd)
            if error.errno != errno.ESPIPE:
                raise
            raise UsageError(
                f"{path} cannot be written at offsets (a pipe or a terminal): give a file or"
                " a block device"
            ) from None
        mode = os.fstat(self._fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self._direct_fd = _open_direct(path) if self.regular or stat.S_ISBLK(mode) else None

    def write(self, offset: int, data: bytearray | bytes | mmap.mmap, zero: bool) -> None:
        end = offset + len(data)
        if zero and self.regular:
            current = os.fstat(self._fd).st_size
            if offset < current:  # zeros over what the file holds: they must be written
                self._pwrite(offset, zeros(min(end, current) - offset))
            if end > current:
                os.ftruncate(self._fd, end)  # a hole, read back as zeros
            return
        self._pwrite(offset, data)

    def _pwrite(self, offset: int, data: bytearray | bytes | mmap.mmap) -> None:
        view = memoryview(data)
        while view:
            if self._direct_fd is not None and _direct_allowed(offset, view):
                try:
                    written = os.pwrite(self._direct_fd, view, offset)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    self._stop_direct()  # this file system wants no O_DIRECT after all
                    continue
            else:
                written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _stop_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def device_size(self) -> int | None:
        """The size of a block device (None for a regular file, which grows)."""
        return None if self.regular else os.lseek(self._fd, 0, os.SEEK_END)

    def cut_to(self, size: int) -> None:
        """Make a regular file at most `size` bytes long (a block device keeps its size)."""
        if self.regular and os.fstat(self._fd).st_size > size:
            os.ftruncate(self._fd, size)

    def set_size(self, size: int) -> None:
        """Make a regular file exactly `size` bytes long (a block device keeps its size)."""
        if self.regular and os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)

    def close(self) -> None:
        self._stop_direct()
        os.close(self._fd)


def _open_direct(path: str) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None  # e.g. EINVAL on a file system without O_DIRECT


def _direct_allowed(offset: int, view: memoryview) -> bool:
    """Whether O_DIRECT takes this write: offset, length and memory all aligned."""
    if offset % DIRECT_ALIGNMENT or len(view) % DIRECT_ALIGNMENT or view.readonly:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGNMENT == 0


class ChunkBuffers(threading.local):
    """One reusable buffer per worker thread and chunk length, page-aligned (anonymous memory
    maps are) so that O_DIRECT can write straight from it."""

    def __init__(self) -> None:
        self.by_length: dict[int, mmap.mmap] = {}

    def get(self, length: int) -> mmap.mmap:
        buffer = self.by_length.get(length)
        if buffer is None:
            buffer = self.by_length[length] = mmap.mmap(-1, length)
        return buffer


def read_chunk(
    client: ApiClient,
    drive: str,
    output: OutputFile,
    buffers: ChunkBuffers,
    verify: bool,
    chunk: Chunk,
    turns: Turns,
) -> None:
    data = fetch_chunk(client, drive, buffers, chunk)
    if verify:

        def fetch_again() -> str:
            nonlocal data
            data = fetch_chunk(client, drive, buffers, chunk)
            return local_hash(data)

        until_verified(client, drive, chunk, local_hash(data), fetch_again, "fetching it again")
    zero = is_zero(data)
    with turns.turn(chunk.index):
        try:
            output.write(chunk.offset, data, zero)
        except OSError as error:
            # Said as what it is: the tool's header says the chunk failed, not where.
            raise FailedError(
                f"Cannot write {output.path} at offset {chunk.offset}: {error.strerror or error}"
            ) from None


def fetch_chunk(
    client: ApiClient, drive: str, buffers: ChunkBuffers, chunk: Chunk
) -> bytes | mmap.mmap:
    """The chunk's bytes from the drive (in this worker's buffer, unless they came as gzip)."""
    path = api_path("drives", drive, "read", str(chunk.offset), str(chunk.length))
    # The daemon answers a never-written chunk with a few bytes of gzip instead of 5 MiB.
    response = client.request("GET", path, headers={"Accept-Encoding": "gzip"})
    encoding = response.getheader("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return client.read_gzip(response, chunk.length)
    if encoding not in ("", "identity"):
        # Taken as the drive's bytes, an encoding not asked for (deflate, br) would be written
        # to the file as they came, the run "completed".
        client.close()
        raise FailedError(
            f"The answer from {client.endpoint.url} is encoded as {encoding[:40]!r}, which was"
            " not asked for"
        )
    data = buffers.get(chunk.length)
    client.read_into(response, memoryview(data))
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = transfer_parser(
        "openhosting-download",
        "Download a drive to a file (or a block device) in chunks.",
        "fetched",
    )
    add = parser.add_argument
    add(
        "-o",
        dest="offset",
        type=size_argument,
        metavar="OFFSET",
        help="byte offset from which to resume the download (default: the file's size, rounded"
        " down to a whole chunk)",
    )
    add("drive", type=str.lower, metavar="DRIVE", help="UUID of the drive")
    add("file", metavar="FILE", help="the file (or block device) to write")
    return parser


def download(args: argparse.Namespace) -> int:
    chunk_size = args.chunk
    start = resume_offset(args.file, chunk_size) if args.offset is None else args.offset
    client = client_from_environment()
    size = drive_size(client, args.drive)
    client.close()  # the workers open their own connections
    if start > size and args.offset is None:
        # No -o given: the offset is the file's own size, which the user never typed.
        raise UsageError(
            f"{args.file} is larger than drive {args.drive} ({size} bytes), so it is no"
            " download of it to resume: -o 0 downloads the drive over it"
        )
    if start > size:
        raise UsageError(f"Offset {start} is past the end of drive {args.drive} ({size} bytes)")
    held = regular_size(args.file)
    if held is not None and start > held:
        # The bytes between would read as zeros: a file that claims more than it holds.
        raise UsageError(
            f"{args.file} holds {held} bytes: -o {start} would leave the bytes before it"
            " missing (without -o the download resumes from the file's size)"
        )
    try:
        output = OutputFile(args.file)
    except OSError as error:
        raise UsageError(f"Failed to open {args.file}: {error.strerror}") from None
    try:
        room = output.device_size()
        if room is not None and room < size:
            # Its end would fail the chunk there with ENOSPC, and every resume the same way.
            raise UsageError(
                f"{args.file} holds {room} bytes: too small for drive {args.drive} ({size} bytes)"
            )
        # What the file holds past `start` is about to be replaced: kept until then, it would
        # make a run that stops early look done to the next one, which resumes from the size.
        output.cut_to(start)
        return _download(args, client, output, start, size)
    finally:
        output.close()


def _download(
    args: argparse.Namespace, client: ApiClient, output: OutputFile, start: int, size: int
) -> int:
    span = ChunkSpan(start, size, args.chunk)
    result = run_transfer(
        f"Downloading {span.count} chunks of {span.chunk_size} bytes starting at {start}: ",
        span,
        functools.partial(read_chunk, client, args.drive, output, ChunkBuffers(), args.verify),
        client,
        args.parallel,
        before_finish=lambda: output.set_size(size),
    )
    # Chunks are written in order: every one before the first unfinished one is in the file.
    resume = span.resume_offset(result)
    return exit_status(
        result,
        f"Interrupted at offset {resume}",
        lambda chunk: f"Failed to read chunk at offset {chunk.offset}",
        f"Restart with '-o {resume}' to resume the download",
    )


def main(argv: list[str] | None = None) -> int:
    return transfer_tool_main(build_parser(), download, argv)


if __name__ == "__main__":
    sys.exit(main())
