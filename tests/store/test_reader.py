"""The Reader's rows by column name are the engine's, read afresh on every call; its data
version moves with every commit."""

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, bindparam, create_engine, insert, select

from openhosting.store.database import open_engine
from openhosting.store.reader import Reader
from openhosting.store.tables import users

BY_UUID = select(users).where(users.c.uuid == bindparam("uuid"))


def test_mappings_are_the_engines_rows_and_see_every_commit(engine: Engine) -> None:
    reader = Reader(engine)
    try:
        assert reader.mappings(BY_UUID, uuid="u1") == []
        with engine.begin() as connection:
            connection.execute(insert(users).values(uuid="u1", key_hash="h", created_at=1))
        with engine.connect() as connection:
            expected = [dict(row) for row in connection.execute(BY_UUID, {"uuid": "u1"}).mappings()]
        assert reader.mappings(BY_UUID, uuid="u1") == expected
        with engine.begin() as connection:
            connection.execute(users.update().values(key_hash="h2"))
        assert reader.mappings(BY_UUID, uuid="u1")[0]["key_hash"] == "h2"
    finally:
        reader.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """The platform's SQLite database (WAL mode, migrated), the single-host store."""
    opened = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    yield opened
    opened.dispose()


def test_data_version_moves_with_every_commit_of_any_connection_without_a_statement(
    sqlite_engine: Engine,
) -> None:
    """On SQLite the version is read from the WAL-index header: no statement per request (a
    `PRAGMA data_version` before), and still a new number after each commit, whoever
    makes it: this engine, or another process's connection (the admin tool's). (PostgreSQL
    has its change feed instead: tests/store/test_notifications.py.)"""
    engine = sqlite_engine
    reader = Reader(engine)
    statements: list[str] = []
    try:
        first = reader.data_version()
        reader._driver().set_trace_callback(statements.append)
        assert reader.data_version() == reader.data_version() == first
        with engine.begin() as connection:
            connection.execute(insert(users).values(uuid="u1", key_hash="h", created_at=1))
        second = reader.data_version()
        assert second != first
        other = sqlite3.connect(engine.url.database or "")
        try:
            other.execute("UPDATE users SET key_hash = 'h2'")
            assert reader.data_version() == second  # not committed yet
            other.commit()
            third = reader.data_version()
            assert third not in (first, second)
            # A checkpoint that starts the WAL again is no change of the data, but may be
            # told as one; a commit after it is a new number still.
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            after_checkpoint = reader.data_version()
            other.execute("UPDATE users SET key_hash = 'h3'")
            other.commit()
            assert reader.data_version() not in (first, second, third, after_checkpoint)
        finally:
            other.close()
        assert reader.mappings(BY_UUID, uuid="u1")[0]["key_hash"] == "h3"
        reader._driver().set_trace_callback(None)
        # The row read is the only statement this connection ran (and shows it is traced).
        assert [statement.split()[0] for statement in statements] == ["SELECT"]
    finally:
        reader.close()


def test_data_version_of_a_database_not_in_wal_mode_asks_sqlite(tmp_path: Path) -> None:
    """A database without a WAL-index (here: rollback journal) is still told right."""
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (a INTEGER)")
        reader = Reader(engine)
        try:
            first = reader.data_version()
            other = sqlite3.connect(tmp_path / "plain.db")
            other.execute("INSERT INTO t VALUES (1)")
            other.commit()
            other.close()
            reader._forget_version()  # as the next run of the event loop would
            assert reader.data_version() != first
        finally:
            reader.close()
    finally:
        engine.dispose()


# Whether another process could take the write lock on SQLite's "dead man switch", the byte
# of a -shm file that every process with the database open holds read-locked (os_unix.c,
# UNIX_SHM_DMS at 128): "free" means the next process to open the database resets the file.
DEAD_MAN_SWITCH_PROBE = """
import fcntl, os, sys
try:
    descriptor = os.open(sys.argv[1], os.O_RDWR)
except FileNotFoundError:
    print("gone")  # removed by the last connection to close: nobody has it
    sys.exit()
try:
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    print("held")
else:
    print("free")
"""


def dead_man_switch(engine: Engine) -> str:
    """ "held" while some process has the database's WAL-index in use, else "free"."""
    probe = subprocess.run(
        [sys.executable, "-c", DEAD_MAN_SWITCH_PROBE, f"{engine.url.database}-shm"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


def test_a_reader_in_use_keeps_other_processes_from_resetting_the_wal_index(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A process that opens a WAL database finding no other holding it (no read lock on the
    -shm file's dead man switch) truncates the -shm file and builds it again; a process
    still using it meanwhile touches its mapped pages past the new end and dies of SIGBUS
    (the crash campaign's daemon died so, silently, when the campaign's checker read the
    database) or works on a WAL-index that is no longer the one the others use. The reader
    must leave the lock held: closing any descriptor of the -shm file drops all of this
    process's locks on it, SQLite's too. Its WAL-index (the mapped header) is the engine's:
    other Readers of the engine (a worker thread's, made and closed per call) and another
    engine on the same file, disposed, leave it and the lock alone; the last engine's
    disposal closes it, after the engine's connections."""
    reader = Reader(sqlite_engine)
    try:
        reader.data_version()
        assert reader.mappings(BY_UUID, uuid="u1") == []
        reader.data_version()
        assert reader._wal_index is not None  # the header is what tells commits here
        assert dead_man_switch(sqlite_engine) == "held"
        for _ in range(3):  # as drives' info of many drives, in a worker thread
            passing = Reader(sqlite_engine)
            assert passing.data_version() is not None
            assert passing._wal_index is reader._wal_index
            passing.close()
        assert dead_man_switch(sqlite_engine) == "held"
        other_engine = open_engine(f"sqlite:///{sqlite_engine.url.database}")
        other = Reader(other_engine)
        other.data_version()
        assert other._wal_index is reader._wal_index  # one per file in a process
        other.close()
        other_engine.dispose()
        assert dead_man_switch(sqlite_engine) == "held"
        version = reader.data_version()
        with sqlite_engine.begin() as connection:  # still told by the header
            connection.execute(insert(users).values(uuid="u1", key_hash="h", created_at=1))
        assert reader.data_version() != version
    finally:
        reader.close()
    sqlite_engine.dispose()
    # Nothing of this process holds it (the last connection to close may have removed it).
    assert dead_man_switch(sqlite_engine) in ("free", "gone")
