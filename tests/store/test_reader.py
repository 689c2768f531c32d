"""The Reader's rows by column name are the engine's, read afresh on every call; its data
version moves with every commit."""

import sqlite3
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
