"""Two API nodes metering one PostgreSQL at once charge each hour once: a node's metering
holds the accounts' rows, so the other waits, then sees `metered_at` moved and charges only
what came since (nothing, at the same moment)."""

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from openhosting.config import BillingSettings
from openhosting.services.accounts.billing import Billing, to_micros
from openhosting.store import billing as billing_store
from openhosting.store import users as user_store
from openhosting.store.database import open_engine
from openhosting.store.tables import resources, users

USER = "11111111-2222-3333-4444-555555555555"
HOUR = 3600.0


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = open_engine(postgres_url)
    yield made
    made.dispose()


def test_a_node_metering_while_another_does_waits_and_charges_nothing_twice(
    engine: Engine,
) -> None:
    start = time.time()
    with engine.begin() as connection:
        user_store.insert_user(
            connection, uuid=USER, name="", key_hash="x", created_at=0, metered_at=start,
            balance=to_micros("10"),
        )  # fmt: skip
        connection.execute(resources.insert().values(type="ip", resource="192.0.2.1", user=USER,
                                                     created_at=0))  # fmt: skip
    settings = BillingSettings(enabled=True, ip_hour="1")
    node_a, node_b = Billing(engine, settings), Billing(engine, settings)
    now = start + HOUR

    # Node A is metering (it holds the accounts' rows); node B meters at the same moment.
    with engine.begin() as connection:
        connection.execute(select(users).with_for_update())  # as A's metering does
        metering_b = threading.Thread(target=node_b.meter, args=(now,))
        metering_b.start()
        metering_b.join(timeout=0.5)
        assert metering_b.is_alive(), "B charged while A was metering the same accounts"
        charged = node_a.cost(billing_store.current_usage(connection, USER), now - start)
        billing_store.charge(connection, USER, charged, now)
    metering_b.join(timeout=10)
    assert not metering_b.is_alive()
    assert charged == to_micros("1")  # one IP for one hour at 1 an hour
    with engine.connect() as connection:
        after = billing_store.account_of(connection, USER)
    assert after is not None and after.balance == to_micros("9"), after
    node_a.meter(now)  # again, as a third run at the same moment: nothing more
    with engine.connect() as connection:
        assert billing_store.account_of(connection, USER).balance == to_micros("9")  # type: ignore[union-attr]
