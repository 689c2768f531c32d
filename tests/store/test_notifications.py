"""LISTEN/NOTIFY between processes on one PostgreSQL (store/notifications.py): a notification
arrives when its transaction commits and never when it rolls back; a listener whose
connection is cut says so and listens again."""

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from openhosting.store.database import create_store_engine
from openhosting.store.notifications import Listener, notify

CHANNEL = "oh_test"
WAIT = 5.0  # seconds: far above what a notification takes on loopback


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = create_store_engine(postgres_url)
    yield made
    made.dispose()


class Heard:
    """What a listener was told, as it came."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.connected: list[bool] = []
        self.changed = threading.Condition()

    def on_notify(self, _channel: str, payload: str) -> None:
        with self.changed:
            self.payloads.append(payload)
            self.changed.notify_all()

    def on_connected(self, connected: bool) -> None:
        with self.changed:
            self.connected.append(connected)
            self.changed.notify_all()

    def wait(self, until: Callable[[], bool]) -> bool:
        with self.changed:
            return self.changed.wait_for(until, timeout=WAIT)


def test_a_notification_arrives_on_commit_only_and_listening_resumes_after_a_cut(
    engine: Engine, postgres_url: str
) -> None:
    heard = Heard()
    listener = Listener(engine, [CHANNEL], heard.on_notify, heard.on_connected)
    listener.start()
    try:
        assert heard.wait(lambda: heard.connected == [True])
        with engine.connect() as connection:
            notify(connection, CHANNEL, "rolled back")
            connection.rollback()
        with engine.begin() as connection:
            notify(connection, CHANNEL, "committed")
        assert heard.wait(lambda: heard.payloads == ["committed"])
        time.sleep(0.2)
        assert heard.payloads == ["committed"]  # the rolled back one never came

        # The server ends the listening connection (as a restart or a network cut would).
        with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert heard.wait(lambda: heard.connected[-2:] == [False, True])
        with engine.begin() as connection:
            notify(connection, CHANNEL, "after")
        assert heard.wait(lambda: heard.payloads[-1:] == ["after"])
    finally:
        listener.stop()
    assert not any(t.name == "listen" and t.is_alive() for t in threading.enumerate())
