"""What the two chunked transfer tools (`openhosting-upload`, `openhosting-download`) share:
their entry point, their parser with its `-c CHUNK`, `-p N` and `--verify` options, the
drive's size, a run of chunks shown by the dots or a progress bar, and how a run that did not
finish is reported."""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from openhosting.client.chunks import (
    DEFAULT_WORKERS,
    Chunk,
    ChunkRun,
    RunResult,
    Turns,
    chunk_at,
    chunk_count,
)
from openhosting.client.http_client import ApiClient, api_path
from openhosting.client.progress import choose_progress
from openhosting.client.tool import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    interrupt_on_sigterm,
    positive_int_argument,
    positive_size_argument,
    run_tool,
)
from openhosting.client.verify import VERIFY_RETRIES
from openhosting.errors import ApiError, FailedError, MissingError
from openhosting.wire.sizes import MAX_SIZE
from openhosting.wire.text import parse_properties

DEFAULT_CHUNK = 5242880
# The largest -c: each chunk in flight is held in memory (an upload's twice, with its gzip),
# so a slip such as -c 5G for 5M must be refused, not fill the machine's memory.
MAX_CHUNK = 1 << 30
# The most -p: the platform serves 16 transfers of a user at once by default (it tells the rest
# to wait), and each worker holds a connection and a chunk.
MAX_WORKERS = 64


def chunk_size_argument(text: str) -> int:
    """An argparse type: -c, a byte count above zero and at most MAX_CHUNK."""
    value = positive_size_argument(text)
    if value > MAX_CHUNK:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than 1G (each chunk in flight is held in memory)"
        )
    return value


def workers_argument(text: str) -> int:
    """An argparse type: -p, a whole number above zero and at most MAX_WORKERS."""
    value = positive_int_argument(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_WORKERS}")
    return value


def transfer_tool_main(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
) -> int:
    """A transfer tool's `main`: SIGTERM interrupts like Ctrl-C (so that the tool still says
    how to resume), then `body` runs on the parsed `argv` with errors as messages."""
    interrupt_on_sigterm()
    args = parser.parse_args(argv)
    return run_tool(lambda: body(args))


def drive_size(client: ApiClient, drive: str) -> int:
    """The `size` of `drive` from its info (MissingError naming it if there is none)."""
    try:
        answer = client.call("GET", api_path("drives", drive, "info"))
    except MissingError:
        raise MissingError(f"Drive {drive} not found") from None
    size = parse_properties(answer.decode("utf-8", "replace")).get("size")
    if size is None:
        raise MissingError(f"Drive {drive} not found")
    # str.isdigit() also takes '²' (which int() refuses) and other scripts' digits.
    if not (size.isascii() and size.isdigit()) or int(size) > MAX_SIZE:
        raise FailedError(f"The info of drive {drive} has no valid size: {size[:40]!r}")
    return int(size)


@dataclass(frozen=True)
class ChunkSpan:
    """Bytes `start` to `end` of a drive, moved in chunks of `chunk_size`."""

    start: int
    end: int
    chunk_size: int

    @property
    def count(self) -> int:
        return chunk_count(self.start, self.end, self.chunk_size)

    def chunk(self, index: int) -> Chunk:
        return chunk_at(index, self.start, self.end, self.chunk_size)

    def resume_offset(self, result: RunResult) -> int:
        """Where a run over this span that did not finish resumes: every chunk before its
        first unfinished one is done."""
        return self.start + result.first_unfinished * self.chunk_size


def transfer_parser(prog: str, description: str, sent: str) -> argparse.ArgumentParser:
    """A transfer tool's parser, with what both take: `-c CHUNK`, `-p N` and `--verify`;
    `sent` says what happens to chunks (`sent`, `fetched`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Environment: OHURI (the API endpoint), OHAUTH (<user uuid>:<secret API key>).",
    )
    parser.add_argument(
        "-c",
        dest="chunk",
        type=chunk_size_argument,
        default=DEFAULT_CHUNK,
        metavar="CHUNK",
        help=f"size of chunks, at most 1G (default: {DEFAULT_CHUNK})",
    )
    parser.add_argument(
        "-p",
        dest="parallel",
        type=workers_argument,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"chunks {sent} at once, at most {MAX_WORKERS} (default: {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help=f"compare each chunk's SHA-256 with the drive's; a chunk that differs is {sent}"
        f" again (up to {VERIFY_RETRIES} times)",
    )
    return parser


def run_transfer(
    header: str,
    span: ChunkSpan,
    work: Callable[[Chunk, Turns], None],
    client: ApiClient,
    workers: int,
    before_finish: Callable[[], None] | None = None,
) -> RunResult:
    """Run `work` for each chunk of `span` on `workers` threads (each with its own connection
    of `client`), showing `header` then the dots or a bar; `before_finish` runs once every
    chunk is done, before ` completed` is shown."""
    progress = choose_progress(sys.stdout, header, span.end - span.start)
    run = ChunkRun(
        span.count,
        span.chunk,
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


def exit_status(
    result: RunResult, interrupted: str, failed: Callable[[Chunk], str], restart: str
) -> int:
    """The tool's exit status after `result`: 0 when every chunk is done; else, first said on
    standard error, how the run ended (`interrupted`, or `failed` for the first failed chunk
    followed by its error) and `restart`, the command that resumes it."""
    if result.ok:
        return 0
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
