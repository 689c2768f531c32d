"""Opening the database: the engine for a URL (SQLite file or PostgreSQL), each engine's own
settings, and migrations applied by one starter at a time."""

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, PoolProxiedConnection, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from openhosting.errors import FailedError, FullError
from openhosting.store import space_reserve
from openhosting.store.errors import is_storage_full
from openhosting.store.notifications import send_changes

MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL: connections the daemon keeps open (and so the worker threads of store/executor.py).
POOL_SIZE = 8
# SQLite: the connections a serving daemon keeps, all opened at its start (open_pool) and none
# closed until it stops. Closing would not give their files back: while another connection of
# the process holds a lock on the database file (in WAL mode every open one does), SQLite's
# unix VFS keeps a closed connection's descriptor open for a later one to reuse, so a pool
# that grew and shrank with the load left the daemon with more descriptors after each peak.
# Enough for everything that may use one at once: the loop's Reader, the loop (one, or two
# nested), the host heartbeat, billing, the imaging jobs (storage.imaging_concurrency, 2 by
# default) and the builders of big answers (services/off_loop.py, BUILDERS = 4). More at once
# overflow into connections closed after use, which the load campaign would see.
SQLITE_POOL_SIZE = 12
# Any fixed number, the same in every process: the advisory lock migrating starters take.
MIGRATION_LOCK_KEY = 0x6F68_6D69  # "ohmi"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the admin tool write while the daemon reads; NORMAL sync is durable across
    # process crashes, and the daemon's own data (drive bytes) is fsynced separately.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL; None for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def create_store_engine(url: str) -> Engine:
    """An engine for `url` with its database's settings, not yet migrated."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Last in, first out: the few connections the load needs stay warm, and the others
        # never fill a page cache of their own (up to 2 MiB each).
        engine = create_engine(parsed, pool_size=SQLITE_POOL_SIZE, pool_use_lifo=True)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # A dead connection (the server restarted) is found before a request uses it. The
    # overflow is for the event loop's own thread and the other threads of the daemon: the
    # store's workers, all waiting on locks, must not leave them without a connection.
    engine = create_engine(
        parsed,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10},
    )
    # Other nodes cache what they read until told of a write (docs/cluster.md, 'Caches').
    send_changes(engine)
    return engine


def open_pool(engine: Engine) -> None:
    """SQLite: open every connection of the pool now (see SQLITE_POOL_SIZE), so that the
    daemon's descriptors are as many under load as when it began to serve. Nothing for other
    databases: their connections are sockets, closed for good when the pool closes them."""
    if not is_sqlite(engine) or not isinstance(engine.pool, QueuePool):
        return  # an in-memory database has a single connection
    held: list[PoolProxiedConnection] = []
    try:
        for _ in range(engine.pool.size() - engine.pool.checkedout()):
            held.append(engine.raw_connection())
    finally:
        for connection in held:
            connection.close()  # back to the pool, open


def open_engine(target: Path | str) -> Engine:
    """An engine on `target` migrated to the newest schema: a SQLAlchemy URL, or a Path to a
    SQLite file."""
    url = f"sqlite:///{target}" if isinstance(target, Path) else target
    engine = create_store_engine(url)
    # A full disk: SQLite cannot even open the database (its -shm), and the daemon would not
    # start to serve the destroys that free space. The reserve is for that: given up once,
    # then one more try.
    for last_try in (False, True):
        try:
            migrate(engine)
            break
        except Exception as error:
            if not is_storage_full(error):
                raise
            engine.dispose()
            if last_try or not space_reserve.release(engine):
                raise _state_full(engine) from None
    space_reserve.refill(engine)
    return engine


def _state_full(engine: Engine) -> FullError:
    return FullError(
        f"The file system of {Path(engine.url.database or '').parent} is full: the database"
        " cannot be opened. Free space there (or grow it) and start again"
    )


def migrate(engine: Engine) -> None:
    """Apply every pending migration; concurrent starters (daemons, admin tools) take turns."""
    # Alembic narrates every step at INFO; an operator only needs to hear of failures.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS))
    with (
        _sqlite_file_lock(engine),
        engine.connect() as connection,
        _ddl_in_transaction(connection),
        connection.begin(),
    ):
        _begin_sqlite_transaction(connection)
        _take_migration_lock(connection)
        current = set(MigrationContext.configure(connection).get_current_heads())
        if current == _newest_revisions():
            return  # Alembic's own run finds nothing to do too, in ~0.1 s more of imports
        _refuse_a_newer_schema(connection)
        alembic_config.attributes["connection"] = connection
        # "heads": branches made side by side (one per feature) all apply.
        command.upgrade(alembic_config, "heads")


@functools.cache
def _scripts() -> ScriptDirectory:
    """This version's migrations (read once a process: their scripts are modules Alembic
    loads)."""
    return ScriptDirectory(str(MIGRATIONS))


def _newest_revisions() -> frozenset[str]:
    return frozenset(_scripts().get_heads())


def _refuse_a_newer_schema(connection: Connection) -> None:
    """FailedError if the database is at a revision this version does not know: made by a
    newer version (the code rolled back after an upgrade), which Alembic met with a traceback.
    Nothing is changed."""
    scripts = _scripts()
    known = {revision.revision for revision in scripts.walk_revisions()}
    unknown = sorted(set(MigrationContext.configure(connection).get_current_heads()) - known)
    if unknown:
        newest = ", ".join(scripts.get_heads())
        raise FailedError(
            f"The database {_describe(connection.engine)} was migrated by a newer version of"
            f" Open Hosting (schema {', '.join(unknown)}; this version knows up to {newest}):"
            " install that version again, or restore the backup taken before the upgrade"
        )


def _describe(engine: Engine) -> str:
    return str(engine.url.database) if is_sqlite(engine) else engine.url.render_as_string()


@contextlib.contextmanager
def _ddl_in_transaction(connection: Connection) -> Iterator[None]:
    """SQLite: the migrations' DDL inside their transaction, committed with the new version
    or not at all. Python's sqlite3 driver begins a transaction only before an INSERT, UPDATE
    or DELETE, so an ALTER TABLE or CREATE TABLE ran on its own and was committed at once: a
    daemon killed in a migration left its first statements done and the version before, and
    every later start failed on them (`duplicate column name`). With the driver's implicit
    transactions off, _begin_sqlite_transaction begins one that holds every statement."""
    if not is_sqlite(connection.engine):
        yield
        return
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    previous = driver_connection.isolation_level
    driver_connection.isolation_level = None
    try:
        yield
    finally:
        driver_connection.isolation_level = previous


def _begin_sqlite_transaction(connection: Connection) -> None:
    # IMMEDIATE: the write lock from the start, so another process's write cannot come
    # between the version read and the migration (busy_timeout waits for it instead).
    if is_sqlite(connection.engine):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file, a lock file beside it; nothing for other databases."""
    database = engine.url.database
    if not is_sqlite(engine) or not database or database == ":memory:":
        yield
        return
    path = Path(database)
    with path.with_name(path.name + ".migrate.lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _take_migration_lock(connection: Connection) -> None:
    # PostgreSQL: starters on other hosts share no file; the lock ends with the transaction.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
