"""Wake-ups between the processes on one PostgreSQL: `NOTIFY` in a writing transaction,
`LISTEN` on one connection per daemon.

A notification is sent when its transaction commits (none if it rolls back), so a listener
woken by it reads what was written. Notifications are hints, never the truth: one sent while
a listener is reconnecting is lost, so whoever listens also looks again at a bounded interval.
SQLite is one process: nothing to send, nobody to tell.

Two channels: `oh_jobs` (imaging jobs to claim) and `oh_changes`, sent by every transaction
that wrote (an engine hook, so the admin tool's writes are heard too): the daemons' caches
(store/reader.py, the authentication cache) are trusted only between two of them, and only
while their listening connection is up.
"""

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event, text

log = logging.getLogger("openhosting.notifications")

# Imaging jobs were queued or let go of: a daemon with a free slot may claim one.
JOBS = "oh_jobs"
# Something was written: what a daemon holds in memory from the database may be stale.
CHANGES = "oh_changes"
# How long the listening thread waits for a notification before it looks whether to stop.
WAIT_SECONDS = 0.5
# After the listening connection is lost: the wait before connecting again.
RECONNECT_SECONDS = 1.0


def notify(connection: Connection, channel: str, payload: str = "") -> None:
    """Tell the listeners of `channel` when the caller's transaction commits (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_notify(:channel, :payload)"), {
            "channel": channel, "payload": payload,
        })  # fmt: skip


_WRITES = ("INSERT", "UPDATE", "DELETE")
# On a pooled connection's info: it committed since it was checked out (ChangeFeed.watch).
_COMMITTED = "oh_committed"


def _mark_write(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
    if statement.lstrip()[:6].upper() in _WRITES:
        conn.info["oh_wrote"] = True


def _notify_at_commit(conn: Connection) -> None:
    # Before the driver's commit, on its own connection (no SQLAlchemy events again): the
    # notification is delivered with the commit, never without it.
    if conn.info.pop("oh_wrote", False):
        conn.connection.dbapi_connection.execute(f"SELECT pg_notify('{CHANGES}', '')")  # type: ignore[union-attr]


def _forget_write(conn: Connection) -> None:
    conn.info.pop("oh_wrote", None)


def unheard(connection: Connection) -> None:
    """The writes of `connection`'s transaction so far need tell no cache (no cached read
    covers their table: the operations under way): its commit sends no `oh_changes`."""
    _forget_write(connection)


def send_changes(engine: Engine) -> None:
    """Every transaction of `engine` (PostgreSQL) that wrote sends `oh_changes` as it
    commits."""
    event.listen(engine, "after_cursor_execute", _mark_write)
    event.listen(engine, "commit", _notify_at_commit)
    event.listen(engine, "rollback", _forget_write)


class ChangeFeed:
    """What a daemon knows of the writes to its database, for its caches: a number that
    moves with each `oh_changes` heard and each commit of its own, or None while nothing is
    heard (no listening connection yet, or it was lost): then nothing may be cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._live = False

    def version(self) -> int | None:
        with self._lock:
            return self._count if self._live else None

    def changed(self, *_args: Any) -> None:
        """A commit, here or elsewhere: what was cached before may be stale."""
        with self._lock:
            self._count += 1

    def connected(self, live: bool) -> None:
        """The listening connection came (what was missed meanwhile is unknown: all is
        stale) or went (nothing is heard: cache nothing)."""
        with self._lock:
            self._count += 1
            self._live = live

    def watch(self, engine: Engine) -> None:
        """This process's own commits on `engine` move the number at once (not only when
        their notification comes back): as they begin, and again once their connection is
        given back to the pool, committed. SQLAlchemy's commit hook runs before the commit
        lands: a read by another thread in between sees the rows before it at the new
        number, and would be answered after the commit until the notification came back."""
        event.listen(engine, "commit", self._committing)
        event.listen(engine, "checkin", self._checked_in)

    def _committing(self, connection: Connection) -> None:
        connection.info[_COMMITTED] = True
        self.changed()

    def _checked_in(self, _dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_COMMITTED, False):
            self.changed()


class Listener:
    """A thread holding one connection that LISTENs on `channels`: `on_notify(channel,
    payload)` for each notification, `on_connected(bool)` as the connection comes and goes
    (both called in that thread). Reconnects until stopped."""

    def __init__(
        self,
        engine: Engine,
        channels: Iterable[str],
        on_notify: Callable[[str, str], None],
        on_connected: Callable[[bool], None] | None = None,
    ) -> None:
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_connected = on_connected or (lambda _connected: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (within about WAIT_SECONDS) and its connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=WAIT_SECONDS * 4 + RECONNECT_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg.Error as error:
                log.warning("event=listen_lost error=%s", str(error).strip() or type(error))
            self._on_connected(False)
            self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        # A silent network (no reset) shows within seconds, not TCP's minutes: meanwhile the
        # caches trust what they hold. Named, so the operator sees which it is.
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=10, tcp_user_timeout=5000,
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
            application_name=f"openhosting-listen-{os.getpid()}",
        ) as connection:  # fmt: skip
            for channel in self._channels:
                connection.execute(f"LISTEN {channel}")
            self._on_connected(True)
            log.info("event=listening_for_changes channels=%s", ",".join(self._channels))
            while not self._stop.is_set():
                for notification in connection.notifies(timeout=WAIT_SECONDS):
                    self._on_notify(notification.channel, notification.payload)
                # A dead server shows only when the connection is used: ask it something.
                connection.execute("SELECT 1")
