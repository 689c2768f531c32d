"""The event feed across API nodes (services/cluster/event_relay.py): an event published on one
node's bus reaches the subscribers of another through a real PostgreSQL's `NOTIFY oh_events`, once,
and is neither delivered again nor audited again where it was made; a payload too big for
PostgreSQL is cut to fit."""

import asyncio
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from openhosting.services.cluster.event_relay import (
    CHANNEL,
    MAX_PAYLOAD,
    EventRelay,
    decode,
    encode,
)
from openhosting.services.events import Event, EventBus, Subscription
from openhosting.store.database import create_store_engine
from openhosting.store.notifications import Listener

USER = "6a1f6f55-0d6a-4b8e-9a57-6c7b0f4a9e21"
DRIVE = "0f962616-2071-4173-be79-7dd084271edf"


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = create_store_engine(postgres_url)
    yield made
    made.dispose()


class Node:
    """One API node's bus, relay and listening connection."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.audited: list[Event] = []
        self.bus = EventBus(audit=self.audited.append)
        self.relay = EventRelay(engine, name, self.bus)
        self.bus.send_to_nodes = self.relay.send
        self.connected = asyncio.Event()
        self.heard = 0  # notifications heard, its own included
        loop = asyncio.get_running_loop()
        self.listener = Listener(
            engine,
            [CHANNEL],
            self._heard,
            lambda up: loop.call_soon_threadsafe(self.connected.set) if up else None,
        )
        self.listener.start()

    def _heard(self, _channel: str, payload: str) -> None:
        self.relay.heard(payload)
        self.heard += 1

    async def wait_heard(self, count: int) -> None:
        for _ in range(100):
            if self.heard >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.heard} notifications heard, not {count}")

    def close(self) -> None:
        self.relay.close()
        self.listener.stop()
        self.bus.close()


async def _events(subscription: Subscription, count: int) -> list[Event]:
    got = []
    for _ in range(count):
        event = await subscription.next_event(timeout=5)
        assert event is not None
        got.append(event)
    return got


async def test_an_event_of_one_node_reaches_the_other_once(engine: Engine) -> None:
    a, b = Node(engine, "node-a"), Node(engine, "node-b")
    try:
        await asyncio.wait_for(asyncio.gather(a.connected.wait(), b.connected.wait()), 10)
        a.bus.bind()
        b.bus.bind()
        on_a, on_b = a.bus.subscribe(USER), b.bus.subscribe(USER)
        counted: list[str] = []  # a node's metrics: its own events only
        acting: list[str] = []  # a node's consoles: every node's
        b.bus.add_listener(lambda event: counted.append(event.change))
        b.bus.add_listener(lambda event: acting.append(event.change), relayed=True)
        a.bus.publish(USER, "imaging", DRIVE, "imaging", imaging="50%", job=7)
        b.bus.publish(USER, "drive", DRIVE, "changed")
        # Each node: its own event at once, the other's through PostgreSQL; each once.
        seen_a = [(e.type, e.change, e.fields) for e in await _events(on_a, 2)]
        seen_b = [(e.type, e.change, e.fields) for e in await _events(on_b, 2)]
        expected = [("imaging", "imaging", {"imaging": "50%", "job": 7}),
                    ("drive", "changed", {})]  # fmt: skip
        assert seen_a == expected
        assert seen_b == expected[::-1]
        a.bus.publish(USER, "server", DRIVE, "status", status="active")  # a mark after them
        assert [e.change for e in await _events(on_b, 1)] == ["status"]
        await a.wait_heard(3)  # its own two came back (and were dropped), and B's
        await asyncio.sleep(0)  # what the listener handed to the loop is delivered
        assert [e.change for e in on_a.pending()] == ["status"]  # nothing came twice
        assert on_b.pending() == []
        assert counted == ["changed"]
        assert sorted(acting) == ["changed", "imaging", "status"]
        # Audited where made only.
        assert [e.change for e in a.audited] == ["imaging", "status"]
        assert [e.change for e in b.audited] == ["changed"]
    finally:
        a.close()
        b.close()


def test_a_payload_too_big_for_postgresql_is_cut_to_fit() -> None:
    event = Event(3, 1.5, USER, "imaging", DRIVE, "imaging", {"imaging": "failed",
                                                              "error": "x" * 20000})  # fmt: skip
    payload = encode("node-a", event)
    assert len(payload.encode()) < MAX_PAYLOAD
    node, back = decode(payload)
    assert node == "node-a"
    assert back.fields["imaging"] == "failed" and back.fields["cut"] == 1
    assert 0 < len(str(back.fields["error"])) < 8000
    small = encode("node-a", Event(4, 1.5, USER, "drive", DRIVE, "changed", {"job": 1}))
    assert json.loads(small)["fields"] == {"job": 1}  # nothing cut when it fits


@pytest.mark.parametrize("payload", ["", "{", "[]", '{"node": "x"}', '{"node":"x","fields":3}'])
def test_what_is_no_event_is_not_relayed(payload: str) -> None:
    with pytest.raises(ValueError):
        decode(payload)
