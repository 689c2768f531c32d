"""Row locks on SQLite (store/row_locks.py): a transaction that took its drives' locks keeps
every other connection's write out until it commits, so its check and its write are one.
Without it, a server's start and an imaging job into its drive, in two worker threads, both
read "no claim" and both claimed: the server ran on the drive being imaged (found by start +
image pairs on a real daemon, 1 pair in 16)."""

import threading
import uuid
from pathlib import Path

from sqlalchemy import func, select

from openhosting.store import row_locks
from openhosting.store.database import open_engine
from openhosting.store.tables import claims, drives, users


def test_on_sqlite_a_drive_lock_holds_another_threads_write_until_the_commit(
    tmp_path: Path,
) -> None:
    engine = open_engine(tmp_path / "store.sqlite")
    drive = str(uuid.uuid4())
    wrote = threading.Event()

    def another_write() -> None:  # a destroy of a drive, another claim: any change
        with engine.begin() as other:
            other.execute(users.update().values(name=users.c.name))
        wrote.set()

    try:
        with engine.begin() as holder:
            row_locks.lock_drives(holder, [drive])
            writer = threading.Thread(target=another_write)
            writer.start()
            assert not wrote.wait(0.5), "another connection wrote inside the held transaction"
            # What the holder reads now stays true until its commit.
            holder.execute(select(func.count()).select_from(claims)).scalar_one()
            holder.execute(select(func.count()).select_from(drives)).scalar_one()
        assert wrote.wait(5), "the other write never went through after the commit"
        writer.join(5)
    finally:
        engine.dispose()


def test_locking_no_drive_takes_no_lock(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "store.sqlite")
    try:
        with engine.begin() as holder:
            row_locks.lock_drives(holder, [])
            with engine.begin() as other:  # would wait 5 s and fail if the lock were taken
                other.execute(users.update().values(name=users.c.name))
    finally:
        engine.dispose()
