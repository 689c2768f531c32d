"""The Reader's cache on PostgreSQL (store/reader.py) keys on the daemon's change feed: kept
while no write is heard of, off while the feed hears nothing, and an entry built before a
write never passes for one built after (worker threads fill it side by side)."""

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from openhosting.store.database import open_engine
from openhosting.store.notifications import ChangeFeed
from openhosting.store.reader import Reader


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
