"""Opening the database: engine, SQLite settings, and migrations applied under a file lock."""

import fcntl
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event

from openhosting.store import space_reserve

MIGRATIONS = Path(__file__).parent / "migrations"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the admin tool write while the daemon reads; NORMAL sync is durable across
    # process crashes, and the daemon's own data (drive bytes) is fsynced separately.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def open_engine(path: Path) -> Engine:
    """An engine on the SQLite file at `path`, migrated to the newest schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _configure_sqlite)
    migrate(engine, path.parent / (path.name + ".migrate.lock"))
    space_reserve.refill(engine)
    return engine


def migrate(engine: Engine, lock_path: Path) -> None:
    """Apply every pending migration; concurrent starters (daemon, admin tool) take turns."""
    # Alembic narrates every step at INFO; an operator only needs to hear of failures.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS))
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        with engine.begin() as connection:
            alembic_config.attributes["connection"] = connection
            # "heads": branches made side by side (one per feature) all apply.
            command.upgrade(alembic_config, "heads")
