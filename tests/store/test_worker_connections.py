"""The daemon's SQLite connections are opened at its start and kept: reads from many threads
at once, beside the loop's held Reader, open no descriptor (the load campaign's invariant;
tests/integration/test_daemon_descriptors.py checks it on a real daemon)."""

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from openhosting.store import drives as drive_store
from openhosting.store.database import SQLITE_POOL_SIZE, open_engine, open_pool
from openhosting.store.reader import Reader

THREADS = 6  # the default executor's threads on two cores


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def in_threads(work: Callable[[], object], count: int = THREADS) -> None:
    """`work` in `count` threads at once."""
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_reads_from_threads_beside_the_held_reader_open_no_descriptor(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "state.sqlite")
    loop_reader = Reader(engine)  # held for the daemon's life, as the loop's
    try:
        drive_store.read_drives_of(loop_reader, "someone")
        open_pool(engine)
        before = open_fds()

        def read() -> None:
            reader = Reader(engine)  # a builder's own (services/drives/drives.py)
            try:
                drive_store.read_drives_of(reader, "someone")
            finally:
                reader.close()
            with engine.connect() as connection:
                drive_store.drives_of(connection, "someone")

        for _ in range(3):
            in_threads(read)
        assert open_fds() == before
    finally:
        loop_reader.close()
        engine.dispose()


def test_a_closed_connection_keeps_its_descriptor_while_another_is_open(tmp_path: Path) -> None:
    """Why the pool is opened whole at the start rather than grown and shrunk with the load:
    SQLite keeps the descriptor of a closed connection while another connection of the
    process holds a lock on the file (every open one in WAL mode)."""
    database = tmp_path / "state.sqlite"
    held = sqlite3.connect(database)
    try:
        held.execute("PRAGMA journal_mode=WAL")
        held.execute("SELECT 1 FROM sqlite_master").fetchall()
        before = open_fds()
        other = sqlite3.connect(database)
        other.execute("SELECT 1 FROM sqlite_master").fetchall()
        other.close()
        assert open_fds() == before + 1  # its database file's descriptor, kept for reuse
    finally:
        held.close()


def test_the_pool_holds_its_connections_open(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "state.sqlite")
    try:
        open_pool(engine)
        assert engine.pool.checkedin() == SQLITE_POOL_SIZE  # type: ignore[attr-defined]
    finally:
        engine.dispose()
