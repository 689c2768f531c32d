"""`--verify` of the chunked transfer tools: each chunk's SHA-256 compared with the one the
daemon computes of the same range (`/drives/D/hash/OFFSET/SIZE`), so that a chunk damaged on
its way (or on the drive) is sent or fetched again, a bounded number of times, instead of
being found out later, or never."""

import hashlib
import mmap
import sys
from collections.abc import Callable

from openhosting.client.chunks import Chunk
from openhosting.client.http_client import ApiClient, api_path
from openhosting.errors import FailedError
from openhosting.wire.text import parse_properties

# A chunk whose hash still differs after this many new attempts is a failure: something keeps
# damaging it, and sending it again would not help.
VERIFY_RETRIES = 3


def local_hash(data: bytes | bytearray | mmap.mmap) -> str:
    """The hex SHA-256 of a chunk's bytes as the tool has them."""
    return hashlib.sha256(data).hexdigest()


def drive_hash(client: ApiClient, drive: str, chunk: Chunk) -> str:
    """The hex SHA-256 the daemon computes of the chunk's range of the drive."""
    path = api_path("drives", drive, "hash", str(chunk.offset), str(chunk.length))
    answer = parse_properties(client.call("GET", path).decode("utf-8", "replace"))
    if answer.get("algorithm") != "sha256" or answer.get("size") != str(chunk.length):
        raise FailedError(
            f"The hash of chunk {chunk.index + 1} from the daemon is not a sha256 of"
            f" {chunk.length} bytes: {answer}"
        )
    return answer.get("hash", "")


def report_mismatch(chunk: Chunk, attempt: int, action: str) -> None:
    """Say on standard error that a chunk differed and what is done about it."""
    print(
        f"Chunk {chunk.index + 1} at offset {chunk.offset}: its hash differs from the"
        f" drive's, {action} ({attempt} of {VERIFY_RETRIES})",
        file=sys.stderr,
        flush=True,
    )


def still_differs(chunk: Chunk, ours: str, theirs: str) -> FailedError:
    """The error of a chunk that differed after every retry."""
    return FailedError(
        f"Chunk {chunk.index + 1} at offset {chunk.offset} ({chunk.length} bytes) still"
        f" differs after {VERIFY_RETRIES} retries: sha256 {ours} here, {theirs} on the drive"
    )


def until_verified(
    client: ApiClient, drive: str, chunk: Chunk, ours: str, again: Callable[[], str], action: str
) -> None:
    """Compare the chunk's hash `ours` with the drive's; while they differ, `again()` moves
    the chunk once more (sends or fetches it) and returns its hash here, up to
    VERIFY_RETRIES times; then FailedError."""
    for attempt in range(VERIFY_RETRIES + 1):
        theirs = drive_hash(client, drive, chunk)
        if theirs == ours:
            return
        if attempt == VERIFY_RETRIES:
            raise still_differs(chunk, ours, theirs)
        report_mismatch(chunk, attempt + 1, action)
        ours = again()
