"""A full disk is recognised whichever database reports it: the API answers 507 full. A
database server away is told from a statement it refused: the API answers 503 failed."""

import sqlite3

import psycopg
from sqlalchemy.exc import OperationalError

from openhosting.store.errors import is_database_unreachable, is_storage_full


def test_postgresqls_disk_full_is_storage_full_and_its_other_errors_are_not() -> None:
    full = OperationalError("INSERT", {}, psycopg.errors.DiskFull("could not extend file"))
    assert is_storage_full(full)
    locked = OperationalError("INSERT", {}, psycopg.errors.LockNotAvailable("lock timeout"))
    assert not is_storage_full(locked)


def test_sqlites_full_database_is_storage_full() -> None:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert is_storage_full(OperationalError("INSERT", {}, error))


def test_a_database_away_is_told_from_a_statement_that_failed() -> None:
    # No connection could be made (SQLAlchemy wraps it with no statement): away.
    refused = OperationalError(None, None, psycopg.OperationalError("connection refused"))
    assert is_database_unreachable(refused)
    # A connection lost under a statement: SQLAlchemy invalidates it, away.
    lost = OperationalError(
        "SELECT 1", {}, psycopg.OperationalError("server closed the connection"),
        connection_invalidated=True,
    )  # fmt: skip
    assert is_database_unreachable(lost)
    wrapped = RuntimeError("in a worker thread")
    wrapped.__cause__ = lost
    assert is_database_unreachable(wrapped)
    # The server answered and refused the statement: not away (a fault to look at).
    locked = OperationalError("UPDATE", {}, psycopg.errors.LockNotAvailable("lock timeout"))
    assert not is_database_unreachable(locked)
    assert not is_database_unreachable(ValueError("nothing of the database"))
