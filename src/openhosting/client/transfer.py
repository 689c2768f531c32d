"""What the two chunked transfer tools (`openhosting-upload`, `openhosting-download`) share:
their `-c CHUNK` and `-p N` options, a run of chunks shown by the dots or a progress bar, and
how a failed chunk's error reads."""

import argparse
import sys
from collections.abc import Callable

from openhosting.client.chunks import (
    DEFAULT_WORKERS,
    Chunk,
    ChunkRun,
    RunResult,
    Turns,
    chunk_at,
    chunk_count,
)
from openhosting.client.http_client import ApiClient
from openhosting.client.progress import choose_progress
from openhosting.client.tool import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    positive_int_argument,
    positive_size_argument,
)
from openhosting.client.verify import VERIFY_RETRIES
from openhosting.errors import ApiError

DEFAULT_CHUNK = 5242880


def add_chunk_options(parser: argparse.ArgumentParser, sent: str) -> None:
    """`-c CHUNK`, `-p N` and `--verify`; `sent` says what happens to chunks (`sent`,
    `fetched`)."""
    parser.add_argument(
        "-c",
        dest="chunk",
        type=positive_size_argument,
        default=DEFAULT_CHUNK,
        metavar="CHUNK",
        help=f"size of chunks (default: {DEFAULT_CHUNK})",
    )
    parser.add_argument(
        "-p",
        dest="parallel",
        type=positive_int_argument,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"chunks {sent} at once (default: {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help=f"compare each chunk's SHA-256 with the drive's; a chunk that differs is {sent}"
        f" again (up to {VERIFY_RETRIES} times)",
    )


def run_transfer(
    header: str,
    start: int,
    end: int,
    chunk_size: int,
    work: Callable[[Chunk, Turns], None],
    client: ApiClient,
    workers: int,
    before_finish: Callable[[], None] | None = None,
) -> RunResult:
    """Run `work` for each chunk of bytes `start` to `end` on `workers` threads (each with its
    own connection of `client`), showing `header` then the dots or a bar; `before_finish` runs
    once every chunk is done, before ` completed` is shown."""
    progress = choose_progress(sys.stdout, header, end - start)
    run = ChunkRun(
        chunk_count(start, end, chunk_size),
        lambda index: chunk_at(index, start, end, chunk_size),
        work,
        workers=workers,
        worker_done=client.close,
    )
    progress.start()
    result = run.run(lambda chunk: progress.advance(chunk.length), progress.tick)
    if not result.ok:
        progress.fail()
        return result
    if before_finish is not None:
        before_finish()
    progress.finish()
    return result


def report_unfinished(
    result: RunResult, interrupted: str, failed: Callable[[Chunk], str], restart: str
) -> int:
    """Say on standard error how a run that did not finish ended (`interrupted`, or `failed`
    for the first failed chunk followed by its error) and `restart`, the command that resumes
    it; returns the tool's exit status."""
    if result.interrupted:
        print(f"{interrupted}: aborting", file=sys.stderr)
    else:
        assert result.failed is not None and result.error is not None
        print(f"{failed(result.failed)}: aborting\n{describe(result.error)}", file=sys.stderr)
    print(restart, file=sys.stderr)
    return EXIT_INTERRUPTED if result.interrupted else EXIT_FAILED


def describe(error: BaseException) -> str:
    """A failed chunk's error as the user reads it: the API's message, or what broke."""
    return error.message if isinstance(error, ApiError) else f"{type(error).__name__}: {error}"
