"""Chunked transfers in parallel: the byte range cut into chunks, each handled by one of a few
worker threads, with the facts the tools report at the end.

Chunks are handed out in order; each worker has its own keep-alive connection (see
`http_client`). Work that must happen in chunk order (reading a gzip stream, appending to the
output file) takes its turn with `Turns`. The first failure stops the hand-out; chunks already
under way finish. Ctrl-C (or SIGTERM, see `tool.interrupt_on_sigterm`) stops at once: the
worker threads are daemons, and a chunk in flight simply counts as not done.
"""

import functools
import mmap
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

DEFAULT_WORKERS = 4
_POLL_SECONDS = 0.1
_FIRST_PAGE = 4096


@dataclass(frozen=True)
class Chunk:
    """One piece of a transfer: the `index`-th of this run, `length` bytes at drive `offset`."""

    index: int
    offset: int
    length: int


def chunk_count(start: int, end: int, chunk_size: int) -> int:
    """How many chunks of `chunk_size` cover bytes `start` to `end`."""
    return max(0, -(-(end - start) // chunk_size))


def chunk_at(index: int, start: int, end: int, chunk_size: int) -> Chunk:
    """The `index`-th chunk from `start`; the last one is cut at `end`."""
    offset = start + index * chunk_size
    return Chunk(index, offset, min(chunk_size, end - offset))


@functools.lru_cache(maxsize=4)
def zeros(length: int) -> bytes:
    """`length` zero bytes, kept for the next comparison."""
    return bytes(length)


def is_zero(data: bytes | bytearray | mmap.mmap) -> bool:
    """Whether `data` is all zero bytes: one memcmp (a memoryview would compare bytewise).

    A memory map is compared through a copy, after a look at its first page (where data
    usually shows) so that the copy is made only for what may be all zeros."""
    if isinstance(data, bytes | bytearray):
        return data == zeros(len(data))
    head = data[:_FIRST_PAGE]
    return head == zeros(len(head)) and data[:] == zeros(len(data))


class Cancelled(Exception):
    """The run stopped while this chunk waited for its turn."""


class Turns:
    """Lets chunks do one step in index order, each when all before it have done theirs."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._next = 0
        self._changed = threading.Condition()

    @property
    def completed(self) -> int:
        """How many chunks, from the first, have done their step."""
        return self._next

    @contextmanager
    def turn(self, index: int) -> Iterator[None]:
        """Wait for chunk `index`'s turn; its step is the body. A step that fails keeps the
        turn, so no later chunk goes past a gap (the run is stopping anyway)."""
        with self._changed:
            while self._next != index or self._stop.is_set():
                if self._stop.is_set():
                    raise Cancelled
                self._changed.wait(_POLL_SECONDS)
        yield
        with self._changed:
            self._next = index + 1
            self._changed.notify_all()


@dataclass
class RunResult:
    """How a run ended."""

    count: int
    done: set[int] = field(default_factory=set)
    failed: Chunk | None = None
    error: BaseException | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return len(self.done) == self.count

    @property
    def first_unfinished(self) -> int:
        """The index of the first chunk not done (`count` when all are)."""
        index = 0
        while index in self.done:
            index += 1
        return index


class ChunkRun:
    """Runs `work(chunk, turns)` for `count` chunks on `workers` threads."""

    def __init__(
        self,
        count: int,
        chunk_of: Callable[[int], Chunk],
        work: Callable[[Chunk, Turns], None],
        workers: int = DEFAULT_WORKERS,
        worker_done: Callable[[], None] | None = None,
    ) -> None:
        self._count, self._chunk_of, self._work = count, chunk_of, work
        self._workers = max(1, min(workers, count))
        self._worker_done = worker_done
        self._stop = threading.Event()
        self.turns = Turns(self._stop)
        self._lock = threading.Lock()
        self._next = 0
        self._results: queue.Queue[tuple[Chunk, BaseException | None] | None] = queue.Queue()

    def _take(self) -> Chunk | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self._count:
                return None
            self._next += 1
            return self._chunk_of(self._next - 1)

    def _worker(self) -> None:
        try:
            while (chunk := self._take()) is not None:
                try:
                    self._work(chunk, self.turns)
                except Cancelled:
                    break
                except BaseException as error:  # reported to the main thread, which decides
                    self._stop.set()
                    self._results.put((chunk, error))
                    break
                self._results.put((chunk, None))
        finally:
            if self._worker_done is not None:
                self._worker_done()
            self._results.put(None)

    def run(self, on_done: Callable[[Chunk], None], on_tick: Callable[[], None]) -> RunResult:
        """Run to the end, the first failure, or Ctrl-C; `on_done` and `on_tick` are called
        from this (the main) thread, so they need no locks."""
        result = RunResult(self._count)
        if self._count == 0:
            return result
        threads = [
            threading.Thread(target=self._worker, name=f"chunk-worker-{number}", daemon=True)
            for number in range(self._workers)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                try:
                    item = self._results.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    on_tick()
                    continue
                if item is None:
                    running -= 1
                    continue
                chunk, error = item
                if error is None:
                    result.done.add(chunk.index)
                    on_done(chunk)
                elif result.failed is None or chunk.index < result.failed.index:
                    result.failed, result.error = chunk, error
        except KeyboardInterrupt:
            self._stop.set()
            result.interrupted = True
        return result
