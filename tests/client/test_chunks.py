"""Parallel chunk runs: every chunk once, steps in order when asked, stop at the first failure."""

import mmap
import random
import threading
import time

from openhosting.client.chunks import (
    Chunk,
    ChunkRun,
    Turns,
    chunk_at,
    chunk_count,
    is_zero,
)
from openhosting.errors import FullError


def test_chunks_cover_the_range_and_the_last_one_is_cut() -> None:
    assert chunk_count(0, 10_000_000, 5242880) == 2
    assert chunk_count(100, 100, 10) == 0
    assert chunk_at(1, 0, 10_000_000, 5242880) == Chunk(1, 5242880, 4757120)
    assert chunk_at(2, 5, 30, 10) == Chunk(2, 25, 5)


def test_zero_detection() -> None:
    assert is_zero(bytes(1000)) and is_zero(bytearray(7)) and is_zero(b"")
    assert not is_zero(bytes(999) + b"\x01")


def test_zero_detection_in_a_memory_map() -> None:
    with mmap.mmap(-1, 3 * 4096) as buffer:
        assert is_zero(buffer)
        buffer[-1] = 1  # past the first page, which alone looks like zeros
        assert not is_zero(buffer)
        buffer[-1], buffer[5] = 0, 1
        assert not is_zero(buffer)


def run_of(count: int, work, workers: int = 4) -> tuple[ChunkRun, list[int]]:  # type: ignore[no-untyped-def]
    run = ChunkRun(count, lambda index: chunk_at(index, 0, count * 10, 10), work, workers)
    return run, []


def test_every_chunk_runs_once_on_several_threads_and_steps_take_turns() -> None:
    threads: set[str] = set()
    steps: list[int] = []
    lock = threading.Lock()

    def work(chunk: Chunk, turns: Turns) -> None:
        with lock:
            threads.add(threading.current_thread().name)
        time.sleep(random.uniform(0, 0.01))  # finish out of order
        with turns.turn(chunk.index):
            steps.append(chunk.index)

    run, done = run_of(40, work)
    result = run.run(lambda chunk: done.append(chunk.index), lambda: None)
    assert result.ok and result.first_unfinished == 40
    assert sorted(done) == list(range(40))
    assert steps == list(range(40))
    assert len(threads) > 1


def test_the_first_failure_stops_the_run_and_says_where_to_resume() -> None:
    def work(chunk: Chunk, turns: Turns) -> None:
        if chunk.index == 5:
            raise FullError("no room")
        time.sleep(0.001)

    run, _ = run_of(100, work, workers=2)
    result = run.run(lambda chunk: None, lambda: None)
    assert not result.ok and not result.interrupted
    assert result.failed == Chunk(5, 50, 10)
    assert isinstance(result.error, FullError)
    assert result.first_unfinished == 5
    assert len(result.done) < 100  # the hand-out stopped


def test_a_failed_step_keeps_later_chunks_from_taking_their_turn() -> None:
    stepped: list[int] = []

    def work(chunk: Chunk, turns: Turns) -> None:
        with turns.turn(chunk.index):
            if chunk.index == 3:
                raise OSError("disk gone")
            stepped.append(chunk.index)

    run, _ = run_of(20, work)
    result = run.run(lambda chunk: None, lambda: None)
    assert stepped == [0, 1, 2]
    assert result.first_unfinished == 3 and run.turns.completed == 3


def test_no_chunks_is_a_finished_run() -> None:
    run, _ = run_of(0, lambda chunk, turns: None)
    assert run.run(lambda chunk: None, lambda: None).ok
