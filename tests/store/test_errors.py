"""A full disk is recognised whichever database reports it: the API answers 507 full."""

import sqlite3

import psycopg
from sqlalchemy.exc import OperationalError

from openhosting.store.errors import is_storage_full


def test_postgresqls_disk_full_is_storage_full_and_its_other_errors_are_not() -> None:
    full = OperationalError("INSERT", {}, psycopg.errors.DiskFull("could not extend file"))
    assert is_storage_full(full)
    locked = OperationalError("INSERT", {}, psycopg.errors.LockNotAvailable("lock timeout"))
    assert not is_storage_full(locked)


def test_sqlites_full_database_is_storage_full() -> None:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert is_storage_full(OperationalError("INSERT", {}, error))
