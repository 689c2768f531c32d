"""The Reader's cache on PostgreSQL (store/reader.py) keys on the daemon's change feed: kept
while no write is heard of, off while the feed hears nothing, and an entry built before a
write never passes for one built after (worker threads fill it side by side)."""

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, event, insert, select

from openhosting.store.database import open_engine
from openhosting.store.notifications import ChangeFeed
from openhosting.store.reader import Reader
from openhosting.store.tables import users


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = open_engine(postgres_url)
    yield made
    made.dispose()


def test_the_cache_holds_between_writes_heard_of_and_only_while_listening(
    engine: Engine,
) -> None:
    feed = ChangeFeed()
    reader = Reader(engine, changes=feed)
    builds: list[int] = []

    def build() -> int:
        builds.append(len(builds))
        return builds[-1]

    # Not listening yet: nothing is kept.
    assert (reader.memo("k", build), reader.memo("k", build)) == (0, 1)
    feed.connected(True)
    assert (reader.memo("k", build), reader.memo("k", build)) == (2, 2)
    feed.changed()  # a write heard of
    assert reader.memo("k", build) == 3
    feed.connected(False)  # the listening connection is lost
    assert (reader.memo("k", build), reader.memo("k", build)) == (4, 5)


def test_an_entry_built_before_a_write_is_not_taken_for_one_built_after(engine: Engine) -> None:
    feed = ChangeFeed()
    feed.connected(True)
    reader = Reader(engine, changes=feed)

    def stale() -> str:
        # While this thread builds, a write is heard of and another thread caches at the new
        # number: what this one built read the database before the write.
        feed.changed()
        assert reader.memo("other", lambda: "fresh elsewhere") == "fresh elsewhere"
        return "stale"

    assert reader.memo("k", stale) == "stale"  # its caller gets it: it asked before the write
    assert reader.memo("k", lambda: "fresh") == "fresh"


def test_kept_gives_what_memo_holds_only_while_no_write_was_heard_and_never_builds(
    engine: Engine,
) -> None:
    feed = ChangeFeed()
    reader = Reader(engine, changes=feed)
    reader.memo("k", lambda: "unkept")
    assert reader.kept("k") is None  # not listening: nothing was kept
    feed.connected(True)
    assert reader.kept("k") is None  # nothing built yet
    assert reader.memo("k", lambda: "built") == "built"
    assert reader.kept("k") == "built"
    feed.changed()  # a write heard of
    assert reader.kept("k") is None
    assert reader.memo("k", lambda: "again") == "again"
    feed.connected(False)  # the listening connection is lost
    assert reader.kept("k") is None


def test_a_read_made_while_this_process_commits_is_not_kept_past_the_commit(
    engine: Engine,
) -> None:
    """The process's own commits move the number at once, before their notification comes
    back, and again once landed: what another connection read between the first move and the
    commit (the rows before it) is not answered after the commit."""
    feed = ChangeFeed()
    feed.connected(True)
    feed.watch(engine)
    reader = Reader(engine, changes=feed)

    def names() -> tuple[str, ...]:
        return tuple(row[0] for row in reader.all(select(users.c.name).order_by(users.c.name)))

    read_meanwhile: list[tuple[str, ...]] = []

    def meanwhile(_connection: Connection) -> None:
        # After the feed's own hook (the number moved), before the commit lands: a request's
        # read in another worker thread, on another connection of the pool.
        read_meanwhile.append(reader.memo("names", names))

    event.listen(engine, "commit", meanwhile)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(users).values(uuid="u1", name="alice", key_hash="0" * 64, created_at=0)
            )
    finally:
        event.remove(engine, "commit", meanwhile)
    assert len(read_meanwhile) == 1 and "alice" not in read_meanwhile[0]
    assert "alice" in reader.memo("names", names)  # kept from before the commit on main
