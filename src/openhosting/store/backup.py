"""A consistent copy of what the platform cannot rebuild: its database and its key.

The database is copied with SQLite's online backup, page by page under a read transaction, so
the copy is consistent even while the daemon writes. The platform key must go with it: API
keys are checked against HMACs under it and encrypted drives' keys are wrapped with it; a
database without its key opens no encrypted drive. Drive files are not copied here: they are
large and sparse, and belong to the operator's file-level backups (`cp --sparse=always`,
`rsync -S`, snapshots).

A restore puts both back in place of the state directory's, with the daemon stopped: the
database's write-ahead log (`-wal`, `-shm`) is removed first, for SQLite would otherwise replay
the log of the database replaced on top of the one restored.
"""

import fcntl
import functools
import os
import sqlite3
from pathlib import Path

from openhosting.directory_sync import sync_directory
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


# The sidecar files of a SQLite database in WAL mode: the log of its last commits and its index.
WAL_SUFFIXES = ("-wal", "-shm")
# SQLite's unix VFS locks this range of the database file (its "shared" bytes) for as long as
# a connection in WAL mode has it open: a lock we can take there means nobody has it open.
_SQLITE_SHARED_FIRST = 0x40000000 + 2
_SQLITE_SHARED_SIZE = 510


def restore_state(backup: Path, database: Path | None, platform_key: Path) -> list[Path]:
    """Put the backup in `backup` (made by back_up_state) in place of `database` and
    `platform_key`; returns the files written. Refused while a process (a daemon, another
    tool) has the database open. Without a `database` (PostgreSQL) the key alone."""
    key_copy, database_copy = backup / KEY_NAME, backup / DATABASE_NAME
    if not key_copy.is_file() or (database is not None and not database_copy.is_file()):
        raise UsageError(f"No backup in {backup}: {DATABASE_NAME} or {KEY_NAME} is missing")
    if database is not None:
        _check_backup_database(database_copy)
        if database.exists() and _database_in_use(database):
            raise UsageError(
                f"{database} is open in another process: stop the daemon"
                " (systemctl stop openhostingd) before a restore"
            )
    platform_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    restored = [(key_copy, platform_key)]
    if database is not None:
        restored.append((database_copy, database))
    staged = [
        (source, target, target.with_name(target.name + ".restore")) for source, target in restored
    ]
    with Reverter() as revert:
        try:
            for source, _, temporary in staged:
                revert.add(functools.partial(temporary.unlink, missing_ok=True))
                temporary.unlink(missing_ok=True)
                _copy_private(source, temporary)
            if database is not None:
                # The log first: replayed over the restored file it would mix the replaced
                # database's last commits into it.
                for suffix in WAL_SUFFIXES:
                    database.with_name(database.name + suffix).unlink(missing_ok=True)
            for _, target, temporary in staged:
                os.replace(temporary, target)
            sync_directory(platform_key.parent)
            if database is not None and database.parent != platform_key.parent:
                sync_directory(database.parent)
        except OSError as error:
            raise UsageError(f"Restore from {backup} failed: {error}") from None
        revert.success()
    return [target for _, target in restored]


def _check_backup_database(path: Path) -> None:
    # immutable: read as a plain file, no -wal or -shm made beside the backup.
    try:
        copy = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            result = copy.execute("PRAGMA integrity_check").fetchall()
        finally:
            copy.close()
    except sqlite3.Error as error:
        raise UsageError(f"{path} is not a database to restore: {error}") from None
    if result != [("ok",)]:
        raise UsageError(f"{path} is damaged: {result[0][0]}")


def _database_in_use(database: Path) -> bool:
    # Open for writing: a write lock is refused on a descriptor opened read-only (EBADF).
    with database.open("r+b") as file:
        try:
            fcntl.lockf(
                file, fcntl.LOCK_EX | fcntl.LOCK_NB, _SQLITE_SHARED_SIZE, _SQLITE_SHARED_FIRST
            )
        except OSError:
            return True
        fcntl.lockf(file, fcntl.LOCK_UN, _SQLITE_SHARED_SIZE, _SQLITE_SHARED_FIRST)
    return False
