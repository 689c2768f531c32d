"""`openhosting-upload [options] FILE`: upload a drive image in gzipped chunks.

Without `-d` it creates a drive of the image's exact size, named after the file, and prints
`Created drive UUID of size N`; with `-d` it writes into that drive (`Using existing drive
UUID`). Then `Uploading COUNT chunks of CHUNK bytes: `, one `.` per chunk and ` completed`,
as the original ElasticHosts tool printed. Each chunk is gzipped (ISA-L, level 1) and POSTed
to `/drives/D/write/OFFSET`. On failure it prints `E`, says on standard error which chunk
failed and the exact `-d … -o …` that resumes the upload, and exits with status 1.

Beyond the original: chunks go `-p N` at a time (default 4); on a drive this run created,
chunks of zeros are skipped (a new drive reads as zeros); `-e CIPHER` sets the new drive's
`encryption:cipher` (`none` or `aes-xts-plain`; default: the platform's default); on a
terminal a progress bar replaces the dots; `--verify` checks each chunk's SHA-256 against the
drive's (`/drives/D/hash/OFFSET/SIZE`) and sends a chunk that differs again (see verify.py).
"""

import argparse
import functools
import os
import re
import stat
import sys
from collections.abc import Callable

from isal import igzip

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
from openhosting.errors import ApiError, FailedError, UsageError
from openhosting.wire.text import parse_properties, render_object

# A drive's UUID as the API writes it (lowercase).
_DRIVE_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
GZIP_LEVEL = 1  # ISA-L's fastest level: ~10x zlib's default, and the network is not the limit
READ_BLOCK = 4 * 1024 * 1024


class FileSource:
    """A regular file or a block device, read at any offset from any thread."""

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise UsageError(f"{path}: {error.strerror}") from None
        mode = os.fstat(self._fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(self._fd)
            raise UsageError(f"{path}: not a regular file or a block device")
        self.path = path
        self.size = os.lseek(self._fd, 0, os.SEEK_END)  # also right for a block device

    def read(self, chunk: Chunk, turns: Turns) -> bytes:
        data = os.pread(self._fd, chunk.length, chunk.offset)
        while len(data) < chunk.length:  # short reads happen only near a changing end
            more = os.pread(self._fd, chunk.length - len(data), chunk.offset + len(data))
            if not more:
                raise FailedError(f"{self.path} ended early, at byte {chunk.offset + len(data)}")
            data += more
        return data

    def close(self) -> None:
        os.close(self._fd)


def gunzipped_size(path: str) -> int:
    """The size of what the gzip file at `path` holds, by decompressing it once."""
    try:
        mode = os.stat(path).st_mode
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        # A pipe (`-z <(…)`) would be read to its end here, then found empty for the upload,
        # after the drive was made: a failure that resuming repeats.
        raise UsageError(
            f"{path}: not a regular file or a block device (-z reads it twice: once for the"
            " drive's size, then to upload it)"
        )
    total = 0
    buffer = bytearray(READ_BLOCK)
    try:
        with igzip.open(path, "rb") as stream:
            while count := stream.readinto(buffer):
                total += count
    except (OSError, EOFError, igzip.BadGzipFile) as error:
        raise UsageError(f"{path}: not in gzip format ({error})") from None
    return total


class GunzipSource:
    """The decompressed content of a gzip file, read once from front to back in chunk order."""

    def __init__(self, path: str, start: int) -> None:
        self.path = path
        self.size = gunzipped_size(path)
        self._stream = igzip.open(path, "rb")
        self._skip = start  # bytes before the first chunk, skipped on the first read

    def _read_exactly(self, length: int) -> bytes:
        data = self._stream.read(length)
        while len(data) < length:
            more = self._stream.read(length - len(data))
            if not more:
                raise FailedError(f"{self.path}: the gzip stream ended early")
            data += more
        return data

    def read(self, chunk: Chunk, turns: Turns) -> bytes:
        with turns.turn(chunk.index):
            try:
                while self._skip:
                    self._skip -= len(self._read_exactly(min(self._skip, READ_BLOCK)))
                return self._read_exactly(chunk.length)
            except (OSError, EOFError) as error:
                raise FailedError(f"{self.path}: cannot decompress: {error}") from None

    def close(self) -> None:
        self._stream.close()


def create_drive(client: ApiClient, args: argparse.Namespace, size: int) -> str:
    properties = {
        "name": args.name or os.path.basename(args.file),
        "size": str(size),
        "claim:type": "shared" if args.shared else "exclusive",
    }
    if args.tier:
        properties["tier"] = args.tier
    if args.cipher:
        properties["encryption:cipher"] = args.cipher
    try:
        answer = client.call(
            "POST",
            "drives/create",
            # Rendered by the codec, whose escapes keep a newline in a value (a file's name
            # may hold one) from becoming a key line of its own, e.g. `encryption:cipher none`.
            render_object(properties).encode(),
            headers={"Content-Type": "text/plain"},
        )
    except ApiError as error:
        raise type(error)(f"Failed to create drive of size {size}: {error.message}") from None
    drive = parse_properties(answer.decode("utf-8", "replace")).get("drive", "")
    if not _DRIVE_UUID.fullmatch(drive):
        # It is printed and put in every chunk's path: anything but a UUID (an escape
        # sequence for the terminal, a "../") is the server's mistake, not ours to pass on.
        raise FailedError(f"Failed to create drive of size {size}: the answer names no drive")
    return drive


def check_drive(client: ApiClient, drive: str, size: int) -> None:
    """Check that `drive` exists and holds `size` bytes, before sending any."""
    has = drive_size(client, drive)
    if has < size:
        raise UsageError(f"Drive {drive} has {has} bytes: too small for {size} bytes")


def write_chunk(
    client: ApiClient,
    drive: str,
    read: Callable[[Chunk, Turns], bytes],
    skip_zeros: bool,
    verify: bool,
    chunk: Chunk,
    turns: Turns,
) -> None:
    data = read(chunk, turns)
    ours = local_hash(data) if verify else None
    body = None if skip_zeros and is_zero(data) else igzip.compress(data, GZIP_LEVEL)
    del data  # keep one copy per worker in memory, not two
    if body is not None:
        send_chunk(client, drive, chunk, body)
    if ours is None:
        return
    # The compressed body is kept to be sent again: a gzip input cannot be read twice.
    expected = ours

    def send_again() -> str:
        nonlocal body
        if body is None:  # a skipped chunk of zeros, but the drive holds something else
            body = igzip.compress(zeros(chunk.length), GZIP_LEVEL)
        send_chunk(client, drive, chunk, body)
        return expected

    until_verified(client, drive, chunk, ours, send_again, "sending it again")


def send_chunk(client: ApiClient, drive: str, chunk: Chunk, body: bytes) -> None:
    """POST one gzipped chunk to its offset of the drive."""
    response = client.request(
        "POST",
        api_path("drives", drive, "write", str(chunk.offset)),
        body,
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    client.read_all(response)


def build_parser() -> argparse.ArgumentParser:
    parser = transfer_parser(
        "openhosting-upload", "Upload a drive image (or a block device) in gzipped chunks.", "sent"
    )
    add = parser.add_argument
    add(
        "-d",
        dest="drive",
        type=str.lower,
        metavar="DRIVE",
        help="UUID of an existing drive to image (default: create a new drive)",
    )
    add(
        "-e",
        dest="cipher",
        metavar="CIPHER",
        help="encryption:cipher of a new drive: none or aes-xts-plain (default: the platform's)",
    )
    add(
        "-n",
        dest="name",
        metavar="NAME",
        help="name for a newly created drive (default: the file's name)",
    )
    add(
        "-o",
        dest="offset",
        type=size_argument,
        default=0,
        metavar="OFFSET",
        help="byte offset from which to resume the upload into the drive of -d (default: 0)",
    )
    add(
        "-s",
        dest="shared",
        action="store_true",
        help="create the drive with claim:type shared (default: exclusive)",
    )
    add(
        "-t",
        dest="tier",
        metavar="TIER",
        help="tier of a new drive: disk (default), ssd or another the platform has",
    )
    add(
        "-z",
        dest="gunzip",
        action="store_true",
        help="the file is gzipped: upload its decompressed content",
    )
    add("file", metavar="FILE", help="the image file or block device")
    return parser


def upload(args: argparse.Namespace) -> int:
    if args.offset and not args.drive:
        # A new drive reads as zeros: resuming into one would leave the image's start out.
        raise UsageError(
            "-o resumes an upload into the drive it was writing: name that drive with -d"
        )
    if args.drive and (args.cipher is not None or args.tier is not None):
        # Ours, not the original tool's: said with -d, the drive of -d would be written as it
        # is, in its own cipher and tier. (-n and -s are ignored there, as the original did.)
        raise UsageError("-e and -t choose a new drive's cipher and tier: not with -d")
    source = GunzipSource(args.file, args.offset) if args.gunzip else FileSource(args.file)
    try:
        return _upload(args, source)
    finally:
        source.close()


def _upload(args: argparse.Namespace, source: FileSource | GunzipSource) -> int:
    size = source.size
    if size == 0:
        raise UsageError(f"{args.file}: empty")
    if args.offset > size:
        raise UsageError(f"Offset {args.offset} is past the end of {args.file} ({size} bytes)")
    client = client_from_environment()
    if args.drive:
        check_drive(client, args.drive, size)
        drive = args.drive
        print(f"Using existing drive {drive}", flush=True)
    else:
        drive = create_drive(client, args, size)
        print(f"Created drive {drive} of size {size}", flush=True)
    client.close()  # the workers open their own connections

    span = ChunkSpan(args.offset, size, args.chunk)
    result = run_transfer(
        f"Uploading {span.count} chunks of {span.chunk_size} bytes: ",
        span,
        functools.partial(write_chunk, client, drive, source.read, not args.drive, args.verify),
        client,
        args.parallel,
    )
    return exit_status(
        result,
        f"Interrupted during chunk {result.first_unfinished + 1} of {span.count}",
        lambda chunk: f"Failed to write chunk {chunk.index + 1} of {span.count}",
        f"Restart with '-d {drive} -o {span.resume_offset(result)}' to resume the upload",
    )


def main(argv: list[str] | None = None) -> int:
    return transfer_tool_main(build_parser(), upload, argv)


if __name__ == "__main__":
    sys.exit(main())
