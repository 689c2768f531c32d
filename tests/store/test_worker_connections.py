"""Answers built in worker threads leave no database connection open behind them: the
daemon's file descriptors stay level under load (the load campaign's invariant)."""

import os
import threading
from collections.abc import Callable
from pathlib import Path

from openhosting.services.off_loop import worker_connection
from openhosting.store import drives as drive_store
from openhosting.store.database import open_engine
from openhosting.store.reader import Reader


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def in_threads(work: Callable[[], object], count: int = 6) -> None:
    """`work` in `count` threads at once, as the default executor runs big answers."""
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_worker_threads_reader_and_connection_close_their_files(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "state.sqlite")
    try:
        with engine.connect():
            pass  # the pool's first connection, as the daemon's own use makes it
        before = open_fds()

        def read() -> None:
            reader = Reader(engine, pooled=False)
            try:
                drive_store.read_drives_of(reader, "someone")
            finally:
                reader.close()
            with worker_connection(engine) as connection:
                drive_store.drives_of(connection, "someone")

        in_threads(read)
        assert open_fds() <= before
    finally:
        engine.dispose()
