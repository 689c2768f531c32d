"""Inflating a gzip stream in a child process: isa-l's `igzip -d -c` (Debian's `isal`).

A gunzip imaging hands the inflating to igzip so that the machine's two cores share the work:
the child inflates while the job's threads feed it SRC's bytes and write what comes out into
DST. igzip's own loop costs less CPU than driving the same ISA-L inflater from Python in
pieces (bench imaging's 1 GiB image: 1.73 s against 1.87 s on the inflating thread), and
its output lands in memory of the caller's choosing (page-aligned, for O_DIRECT) with no
copy of ours.

igzip reads a stream as docs/imaging.md says: members one after another, the stream ending at
the first byte after a member that does not start another (zeros or junk, ignored: the child
exits there without reading on). Its failures (no gzip header, a damaged or cut stream) are
`GzipStreamError`s, as the in-process inflater's are.

The child is the caller's own process, ended by its pid: on a stop, a failure, or once DST is
full, it is killed and waited for; every wait is bounded.
"""

import contextlib
import fcntl
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

from openhosting.errors import FailedError
from openhosting.reverter import Reverter
from openhosting.storage.gzip_stream import GzipStreamError

IGZIP = "igzip"
# Pipes this big (fcntl F_SETPIPE_SZ; the default is 64 KiB) carry the data in fewer, larger
# reads and writes.
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031
# How long a read waits for output before the caller's `waiting` hears of it (and may stop).
POLL_SECONDS = 0.5
# How long the child has to exit once its output ended, and the feeder to end after that.
EXIT_SECONDS = 30.0
# What igzip says on stderr, and what the in-process inflater says for the same fault.
_MESSAGES = (
    ("invalid gzip header", "not a gzip stream (no gzip header at the start)"),
    ("does not contain a complete gzip file", "the gzip stream is cut short"),
)


def igzip_program() -> str | None:
    """igzip's path, or None where it is not installed (the caller inflates in-process)."""
    return shutil.which(IGZIP)


class IgzipInflater:
    """A running `igzip -d -c`: `feed(stdin_fd)` writes SRC's bytes into the child from a
    thread of its own, yielding each count written (`fed` sums them); `fill` reads what the
    child inflates. Used as a context manager: leaving it kills the child if it still runs.

    `waiting()` is called every `POLL_SECONDS` while no output comes; it may raise (a stop
    request) to end the wait."""

    def __init__(
        self,
        program: str,
        feed: Callable[[int], Iterator[int]],
        waiting: Callable[[], None],
    ) -> None:
        self._waiting = waiting
        self.fed = 0  # SRC bytes written into the child so far
        self._feed_error: BaseException | None = None
        with Reverter() as revert:
            child_in, self._stdin = os.pipe2(os.O_CLOEXEC)
            revert.add(lambda: os.close(self._stdin))
            self._stdout, child_out = os.pipe2(os.O_CLOEXEC)
            revert.add(lambda: os.close(self._stdout))
            try:
                for fd in (self._stdin, self._stdout):
                    _widen(fd)
                self._process = subprocess.Popen(
                    [program, "-d", "-c"], stdin=child_in, stdout=child_out, stderr=subprocess.PIPE
                )
            finally:
                # The child holds its own ends: with ours closed, its exit is an EOF or an
                # EPIPE here.
                os.close(child_in)
                os.close(child_out)
            revert.add(self._end_process)
            self._feeder = threading.Thread(
                target=self._run_feed, args=(feed,), name="igzip-feed", daemon=True
            )
            self._feeder.start()
            revert.success()
        self._output = select.poll()
        self._output.register(self._stdout, select.POLLIN)

    @property
    def pid(self) -> int:
        return self._process.pid

    def fill(self, buffer: memoryview) -> int:
        """Read output into `buffer` until it is full or the output ends; returns the count
        (less than the buffer's length only at the end)."""
        got = 0
        while got < len(buffer):
            # poll, not select: a busy daemon's descriptors go past select's 1024.
            if not self._output.poll(POLL_SECONDS * 1000):
                self._waiting()
                continue
            count = os.readv(self._stdout, [buffer[got:]])
            if count == 0:
                break
            got += count
        return got

    def finish(self) -> None:
        """The output ended: check that the child inflated a whole stream (GzipStreamError
        otherwise) and that SRC was read without error (that error is raised first)."""
        try:
            code = self._process.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise FailedError(f"igzip did not exit within {EXIT_SECONDS:.0f} s") from None
        self._feeder.join(EXIT_SECONDS)
        if self._feed_error is not None:
            raise self._feed_error
        if code != 0:
            raise GzipStreamError(_message(self._stderr()))

    def _run_feed(self, feed: Callable[[int], Iterator[int]]) -> None:
        try:
            for count in feed(self._stdin):
                self.fed += count
        except BrokenPipeError:
            pass  # the child stopped reading: the stream ended before SRC did
        except BaseException as error:  # raised in the job's thread, by finish
            self._feed_error = error
        finally:
            os.close(self._stdin)  # the child sees the end of its input

    def _stderr(self) -> str:
        assert self._process.stderr is not None
        return self._process.stderr.read(4096).decode(errors="replace").strip()

    def _end_process(self) -> None:
        """Kill the child if it still runs (by its pid: it is ours) and wait for it."""
        if self._process.poll() is None:
            self._process.kill()
        try:
            self._process.wait(EXIT_SECONDS)
        finally:
            if self._process.stderr is not None:
                self._process.stderr.close()

    def close(self) -> None:
        """End the child and the feeder, and let go of the pipes."""
        try:
            self._end_process()
        finally:
            os.close(self._stdout)
            # The feeder's writes fail with EPIPE now; it closes its own end as it ends.
            self._feeder.join(EXIT_SECONDS)

    def __enter__(self) -> "IgzipInflater":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _widen(fd: int) -> None:
    # Above the system's pipe-max-size the default size stays: it works, only slower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


def _message(stderr: str) -> str:
    for said, meaning in _MESSAGES:
        if said in stderr:
            return meaning
    return f"damaged gzip stream: {stderr or 'igzip failed'}"
