"""Fast reads for the event loop's hot paths (authentication, listings).

SQLAlchemy builds, compiles and wraps every `execute` in result machinery that costs ten
times the query itself for a one-row SQLite lookup. Here statements are still SQLAlchemy Core,
defined once at module level and compiled once, but run on one held driver connection. Only
the event loop's thread uses a Reader; everything that writes uses the engine as usual.

On PostgreSQL the Reader is plain SQLAlchemy: each read checks a connection out of the pool
(reads may come from the store's worker threads, store/executor.py). Other processes write to
the same database: what is cached is trusted only while the daemon's change feed
(store/notifications.py) has heard of no write since, and nothing is cached while the feed
hears nothing.
"""

import asyncio
import itertools
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, PoolProxiedConnection, Select
from sqlalchemy.sql import Executable

from openhosting.store import wal_index
from openhosting.store.notifications import ChangeFeed

MAX_CACHED = 4096

T = TypeVar("T")


class Reader:
    """One held connection running precompiled read statements."""

    def __init__(self, engine: Engine, changes: ChangeFeed | None = None) -> None:
        """`changes`: on PostgreSQL, what tells of writes (without it nothing is cached)."""
        self._changes = changes
        self._engine = engine
        self._connection: PoolProxiedConnection | None = None
        self._driver_connection: Any = None
        self._compiled: dict[int, tuple[Executable, str, tuple[str, ...]]] = {}
        self._keys: dict[int, tuple[Select[Any], tuple[str, ...]]] = {}
        # By key: the data version it was built at, and what was built. On PostgreSQL it is
        # filled from several threads: an entry is used only at its own version, so one built
        # before a change never passes for one built after.
        self._cached: dict[Hashable, tuple[int, Any]] = {}
        self._cached_version = -1
        self._cache_lock = threading.Lock()
        self._version: int | None = None
        self._local_file = engine.dialect.name == "sqlite"
        self._versions = itertools.count()
        # SQLite in WAL mode: commits are told by the WAL-index header (store/wal_index.py,
        # the engine's, held until the engine is disposed); each new header seen is one more
        # version.
        self._wal_index: wal_index.WalIndex | None = None
        self._wal_index_tried = False
        self._wal_header: bytes | None = None
        self._wal_headers_seen = 0

    @property
    def local(self) -> bool:
        """Whether the database is a local file (SQLite), read in microseconds on the event
        loop; otherwise every read is network I/O, for worker threads only."""
        return self._local_file

    def _driver(self) -> Any:
        """The driver's own connection (sqlite3's): its `execute` skips the pool's cursor
        wrapper, a few µs of every read (and of every `data_version`, asked per request)."""
        if self._connection is None:
            self._connection = self._engine.raw_connection()
            self._driver_connection = self._connection.driver_connection
        return self._driver_connection

    def _compile(self, statement: Executable) -> tuple[str, tuple[str, ...]]:
        cached = self._compiled.get(id(statement))
        if cached is None or cached[0] is not statement:
            compiled = statement.compile(dialect=self._engine.dialect)  # type: ignore[attr-defined]
            cached = (statement, compiled.string, tuple(compiled.positiontup or ()))
            self._compiled[id(statement)] = cached
        return cached[1], cached[2]

    def all(self, statement: Executable, **params: Any) -> list[tuple[Any, ...]]:
        if not self._local_file:
            with self._engine.connect() as connection:
                return [tuple(row) for row in connection.execute(statement, params)]
        sql, names = self._compile(statement)
        # The driver opens no transaction for a SELECT (pysqlite begins one only before a
        # change), so every read sees every commit made before it; fetchall ends the
        # statement, and its cursor goes with the expression.
        return list(self._driver().execute(sql, tuple(params[name] for name in names)).fetchall())

    def all_cached(self, statement: Executable, **params: Any) -> list[tuple[Any, ...]]:
        """`all`, answered from memory while nothing has been committed since it was read:
        for the hottest listings, one look at `data_version` instead of a query. For reads
        only: code that has just written must not expect to see it here in the same run of
        the event loop (see `data_version`)."""
        if not self.caches:
            return self.all(statement, **params)
        key = (id(statement), *sorted(params.items()))
        return list(self.memo(key, lambda: self.all(statement, **params)))

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """What `build` gives, kept under `key` while nothing has been committed since (as
        `all_cached`): for what is made of cached reads only. The same object is given to
        every caller meanwhile, who must not change it. On PostgreSQL without a live change
        feed nothing is kept (see `data_version`): `build` runs every time."""
        if not self.caches:
            return build()
        version = self.data_version()
        with self._cache_lock:
            if version != self._cached_version:
                self._cached.clear()
                self._cached_version = version
            entry = self._cached.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]
        made = build()
        with self._cache_lock:
            if len(self._cached) >= MAX_CACHED:
                self._cached.clear()
            self._cached[key] = (version, made)
        return made

    def kept(self, key: Hashable) -> Any | None:
        """What `memo` keeps under `key` if it is still true (nothing committed since it was
        built), else None; never builds. On PostgreSQL the event loop answers from memory
        with it and sends only a miss to a worker thread: handing a read to a thread and
        back costs several times the whole of a cached answer."""
        if not self.caches:
            return None
        version = self.data_version()
        with self._cache_lock:
            entry = self._cached.get(key)
        return entry[1] if entry is not None and entry[0] == version else None

    @property
    def caches(self) -> bool:
        """Whether reads may be answered from memory now: on SQLite always; on PostgreSQL
        while the change feed hears every write."""
        return self._local_file or (
            self._changes is not None and self._changes.version() is not None
        )

    def mappings(self, statement: Select[Any], **params: Any) -> list[dict[str, Any]]:
        """`all` with each row as a dict by column name, as `Result.mappings()` gives it.
        Values are the driver's own (on SQLite a Boolean column reads 0 or 1)."""
        keys = self._keys.get(id(statement))
        if keys is None or keys[0] is not statement:
            keys = self._keys[id(statement)] = (statement, tuple(statement.selected_columns.keys()))
        return [dict(zip(keys[1], row, strict=True)) for row in self.all(statement, **params)]

    def scalar(self, statement: Executable, **params: Any) -> Any:
        rows = self.all(statement, **params)
        return rows[0][0] if rows else None

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the database: what
        was read before is still true while it stays the same.

        On SQLite in WAL mode (the daemon's), read from the WAL-index header in shared
        memory every time it is asked: no statement, no system call (store/wal_index.py, and
        why its file is never closed while the engine lives). Otherwise `PRAGMA
        data_version`, asked once within one uninterrupted run of the event loop (a
        request's authentication and its listing, say): a commit landing in those
        microseconds is indistinguishable from one landing just after the request.

        On PostgreSQL the change feed's number (it moves with every write heard of); while
        the feed hears nothing, a new number every time: nothing read before may be trusted.
        """
        if not self._local_file:
            heard = self._changes.version() if self._changes is not None else None
            return heard if heard is not None else -1 - next(self._versions)
        index = self._wal_index if self._wal_index_tried else self._open_wal_index()
        if index is not None:
            header = index.header()
            if header is None:  # a commit is being written: nothing read before is trusted
                self._wal_header = None
                return -1 - next(self._versions)
            if header != self._wal_header:
                # Counted before the header is kept: whoever sees the new header as known
                # also sees the new number.
                self._wal_headers_seen += 1
                self._wal_header = header
            return self._wal_headers_seen
        if self._version is not None:
            return self._version
        version = int(self._driver().execute("PRAGMA data_version").fetchall()[0][0])
        try:
            asyncio.get_running_loop().call_soon(self._forget_version)
        except RuntimeError:
            return version  # no event loop (the admin tool): never remembered
        self._version = version
        return version

    def _open_wal_index(self) -> wal_index.WalIndex | None:
        """The engine's WAL-index header, once this Reader's connection has the database
        open in WAL mode; None when the database is not a plain file in WAL mode."""
        self._wal_index_tried = True
        database = self._engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        driver = self._driver()
        if driver.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal":
            return None
        driver.execute("PRAGMA data_version").fetchall()  # a read: the -shm file is open
        self._wal_index = wal_index.of_engine(self._engine, Path(database))
        return self._wal_index

    def _forget_version(self) -> None:
        self._version = None

    def close(self) -> None:
        # The WAL-index stays: it is the engine's, closed when the engine is disposed.
        self._wal_index_tried = False
        self._wal_index = None
        self._wal_header = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
