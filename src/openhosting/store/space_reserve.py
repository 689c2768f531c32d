"""A few MiB kept beside the database for the commands that free space.

On a full file system SQLite cannot even write the WAL frames of a DELETE, so a user could
not destroy a drive to get space back. The reserve is a preallocated file next to the
database: a transaction that frees space (`begin_freeing`) gives it up when the disk is full
and tries once more. It is made again (`refill`) as soon as there is room.
"""

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine

from openhosting.store.errors import is_storage_full

log = logging.getLogger("openhosting.store")

RESERVE_BYTES = 4 * 1024 * 1024  # far more than the WAL frames of a few deletes
T = TypeVar("T")


def reserve_path(engine: Engine) -> Path | None:
    """The reserve beside the engine's SQLite file (None for other databases)."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + ".reserve")


def refill(engine: Engine) -> bool:
    """Make the reserve if it is missing and there is room; whether it is there now."""
    path = reserve_path(engine)
    if path is None or path.exists():
        return path is not None
    partial = path.with_name(path.name + ".new")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
        partial.rename(path)  # present only whole
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        log.warning("event=space_reserve_missing error=%s", error)
        return False
    return True


def release(engine: Engine) -> bool:
    """Give up the reserve (when the disk is full); whether there was one."""
    path = reserve_path(engine)
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.warning("event=space_reserve_used path=%s", path)
    return True


def begin_freeing(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work` in a transaction; when the disk is too full to commit it, give up the
    reserve and run it once more. For commands that free space (destroys)."""
    refill(engine)
    try:
        with engine.begin() as connection:
            return work(connection)
    except Exception as error:
        if not is_storage_full(error) or not release(engine):
            raise
    with engine.begin() as connection:
        return work(connection)
