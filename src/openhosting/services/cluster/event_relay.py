"""One event feed for the API nodes of one PostgreSQL: each node's events told to the others.

Every event a node publishes is sent as `NOTIFY oh_events` with its JSON (the node's name,
the user, type, object, change, time and fields), and what a node hears from the others is
published to its own subscribers (services/events.py `EventBus.relay`): a `/events` stream
of any node tells what happens on any node, each event once (a node skips its own, which it
delivered already; the origin alone writes it to the audit trail).

Sending never blocks the publisher: events queue for a thread of their own, which sends
what has queued in one transaction on a plain connection of the pool (a notification sent
alone, with no write, must not invalidate the nodes' caches as `oh_changes` would).
PostgreSQL refuses payloads of 8000 bytes or more: an event whose JSON is bigger (a long
error text) is sent with its longest text fields cut, marked `"cut": 1`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

from sqlalchemy import Engine

from openhosting.services.events import Event, EventBus, Value

log = logging.getLogger("openhosting.events")

CHANNEL = "oh_events"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL's limit is 8000
MAX_BATCH = 256  # events sent in one transaction
_STOP = None


def encode(node: str, event: Event) -> str:
    """The notification's payload for `event` of `node`, under MAX_PAYLOAD bytes."""
    fields = dict(event.fields)
    while True:
        payload = json.dumps({
            "node": node, "user": event.user, "type": event.type, "object": event.object,
            "change": event.change, "at": event.at, "fields": fields,
        }, separators=(",", ":"))  # fmt: skip
        if len(payload.encode()) < MAX_PAYLOAD:
            return payload
        texts = [name for name, value in fields.items() if isinstance(value, str) and value]
        if not texts:
            fields = {"cut": 1}
            continue
        longest = max(texts, key=lambda name: len(str(fields[name])))
        fields[longest] = str(fields[longest])[: len(str(fields[longest])) // 2]
        fields["cut"] = 1


def decode(payload: str) -> tuple[str, Event]:
    """The node and the event of a payload; ValueError when it is none of ours."""
    try:
        data: dict[str, Any] = json.loads(payload)
        fields: dict[str, Value] = {
            str(name): value
            for name, value in dict(data["fields"]).items()
            if isinstance(value, str | int | float)
        }
        event = Event(
            0, float(data["at"]), str(data["user"]), str(data["type"]), str(data["object"]),
            str(data["change"]), fields,
        )  # fmt: skip
        return str(data["node"]), event
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"not an event: {error}") from None


class EventRelay:
    """Sends this node's events to the others and publishes theirs on `bus`."""

    def __init__(self, engine: Engine, node: str, bus: EventBus) -> None:
        self._engine, self.node, self._bus = engine, node, bus
        self.channel = CHANNEL
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, name="events-out", daemon=True)
        self._started = threading.Lock()

    def send(self, event: Event) -> None:
        """Queue `event` for the other nodes (from any thread; never blocks)."""
        with self._started:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()
        self._queue.put(event)

    def heard(self, payload: str) -> None:
        """A notification of `oh_events` (in the listening thread)."""
        try:
            node, event = decode(payload)
        except ValueError as error:
            log.warning("event=event_not_relayed error=%s", error)
            return
        if node != self.node:  # ours were delivered when published
            self._bus.relay(event)

    def close(self) -> None:
        """Send what is queued, then stop (bounded)."""
        with self._started:
            started = self._thread.ident is not None
        if started:
            self._queue.put(_STOP)
            self._thread.join(timeout=5)

    def _send(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events = [event for event in batch if event is not None]
            if events:
                self._notify(events)
            if len(events) < len(batch):
                return

    def _notify(self, events: list[Event]) -> None:
        try:
            # A pool connection without SQLAlchemy's events: no `oh_changes` goes with it.
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                for event in events:
                    cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, encode(self.node, event)))
                cursor.close()
                connection.commit()
            finally:
                connection.close()
        except Exception as error:  # lost events must never stop the feed or the platform
            log.error("event=events_not_relayed count=%s error=%s", len(events), error)
