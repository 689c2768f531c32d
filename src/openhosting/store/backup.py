"""A consistent copy of what the platform cannot rebuild: its database and its key.

The database is copied with SQLite's online backup, page by page under a read transaction, so
the copy is consistent even while the daemon writes. The platform key must go with it: API
keys are checked against HMACs under it and encrypted drives' keys are wrapped with it; a
database without its key opens no encrypted drive. Drive files are not copied here: they are
large and sparse, and belong to the operator's file-level backups (`cp --sparse=always`,
`rsync -S`, snapshots).
"""

import functools
import os
import sqlite3
from pathlib import Path

from openhosting.errors import UsageError
from openhosting.reverter import Reverter

DATABASE_NAME = "openhosting.sqlite"
KEY_NAME = "platform.key"


def back_up_state(
    database: Path | None, platform_key: Path, target: Path
) -> tuple[Path | None, Path]:
    """Copy the SQLite database and the platform key into the new directory `target` (mode
    0700, files 0600); returns the two copies. `target` must not exist or be empty. Without a
    `database` (a PostgreSQL store, backed up by its own server) the key alone."""
    if (database is not None and not database.is_file()) or not platform_key.is_file():
        raise UsageError(f"No platform state to back up: {database} or {platform_key} is missing")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not an empty directory: choose a new one")
    made_target = not target.exists()
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"Cannot make {target}: {error.strerror or error}") from None
    database_copy, key_copy = target / DATABASE_NAME, target / KEY_NAME
    # No half backup left behind to be mistaken for a whole one.
    with Reverter() as revert:
        if made_target:
            revert.add(target.rmdir)
        for path in (key_copy, database_copy):
            revert.add(functools.partial(path.unlink, missing_ok=True))
        try:
            _copy_private(platform_key, key_copy)
            if database is not None:
                _copy_database(database, database_copy)
        except (OSError, sqlite3.Error) as error:
            raise UsageError(f"Backup into {target} failed: {error}") from None
        revert.success()
    return (database_copy if database is not None else None), key_copy


def _copy_database(database: Path, copy_path: Path) -> None:
    # Made private before SQLite writes a byte into it.
    os.close(os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(copy_path)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()


def _copy_private(source: Path, destination: Path) -> None:
    data = source.read_bytes()
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
