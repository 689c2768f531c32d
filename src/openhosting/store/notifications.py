"""Wake-ups between the processes on one PostgreSQL: `NOTIFY` in a writing transaction,
`LISTEN` on one connection per daemon.

A notification is sent when its transaction commits (none if it rolls back), so a listener
woken by it reads what was written. Notifications are hints, never the truth: one sent while
a listener is reconnecting is lost, so whoever listens also looks again at a bounded interval.
SQLite is one process: nothing to send, nobody to tell.
"""

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
from sqlalchemy import Connection, Engine, text

log = logging.getLogger("openhosting.notifications")

# Imaging jobs were queued or let go of: a daemon with a free slot may claim one.
JOBS = "oh_jobs"
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
        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as connection:
            for channel in self._channels:
                connection.execute(f"LISTEN {channel}")
            self._on_connected(True)
            while not self._stop.is_set():
                for notification in connection.notifies(timeout=WAIT_SECONDS):
                    self._on_notify(notification.channel, notification.payload)
                # A dead server shows only when the connection is used: ask it something.
                connection.execute("SELECT 1")
