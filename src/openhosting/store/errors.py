"""What a failure of the store or of a file means to the API: the platform's storage is full,
or failing, or its database cannot be reached now.

SQLite reports a full disk as SQLITE_FULL ("database or disk is full") wrapped in SQLAlchemy's
exceptions, PostgreSQL as SQLSTATE 53100 (disk_full); files report ENOSPC or EDQUOT. All are
the platform running out of space (507 `full`), never a fault of ours (500). A file
reporting EIO is a disk that fails: 500 `failed` naming the error, not an internal error of
the daemon's. A database server that is away (restarting, cut off, refusing connections) is
503 `failed`: the request may be made again once it is back.
"""

import errno
import os
import sqlite3

from sqlalchemy.exc import DBAPIError, OperationalError

POSTGRESQL_DISK_FULL = "53100"
# SQLite's error when it cannot grow the WAL index (`-shm`) of a database it opens: on a full
# disk, the first connection to a database no process has open fails with it.
SQLITE_IOERR_SHMSIZE = sqlite3.SQLITE_IOERR | (19 << 8)


def is_storage_full(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) says the disk holding the state is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and isinstance(current.orig, BaseException):
            current = current.orig
            continue
        if getattr(current, "sqlstate", None) == POSTGRESQL_DISK_FULL:
            return True
        if isinstance(current, sqlite3.Error):
            # The primary code is the low byte (extended codes add detail above it).
            code = getattr(current, "sqlite_errorcode", None)
            return code is not None and (
                code & 0xFF == sqlite3.SQLITE_FULL or code == SQLITE_IOERR_SHMSIZE
            )
        if isinstance(current, OSError):
            return current.errno in (errno.ENOSPC, errno.EDQUOT)
        current = current.__cause__ or current.__context__
    return False


def storage_io_error(error: BaseException) -> OSError | None:
    """The EIO (the disk's own failure) that `error` is or wraps, else None. SQLite reports
    it as SQLITE_IOERR ("disk I/O error", extended codes above the low byte), given here as
    the EIO it stands for."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EIO:
            return current
        if isinstance(current, DBAPIError) and isinstance(current.orig, BaseException):
            current = current.orig
            continue
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
                return OSError(errno.EIO, os.strerror(errno.EIO))
        current = current.__cause__ or current.__context__
    return None


def is_database_unreachable(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) is the database server away rather than a statement
    that failed: a connection that could not be made (SQLAlchemy wraps it with no statement),
    or one lost under a statement (it invalidates that connection; the pool makes new ones
    once the server answers again)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return True
            return isinstance(current, OperationalError) and current.statement is None
        current = current.__cause__ or current.__context__
    return False
