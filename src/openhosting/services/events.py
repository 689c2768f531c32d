"""The platform's event feed: every change of a user's state (a server's status, imaging
progress, drive claims, objects created, changed or destroyed) as it happens.

Services publish; the API's `/events` stream and the metrics subscribe. Each event is also
written to the audit trail (as method `EVENT`), so the trail tells what the platform did by
itself (a guest powering off, a job ending) beside what users asked.

Publishing never fails and never blocks its caller: it may come from a worker thread (an
imaging job reports progress there), and a subscriber that does not keep up loses its
subscription (it is told so and reconnects with `Last-Event-ID`), never slows the platform.
Memory is bounded: a fixed ring of recent events for resuming, a bounded queue per subscriber.

With several API nodes (services/cluster/event_relay.py) each published event also goes to
`send_to_nodes`, and the other nodes' events come in through `relay`: delivered here like
our own (with an id of this feed), but neither audited again nor sent back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("openhosting.events")

RECENT_EVENTS = 4096  # kept for clients that resume with Last-Event-ID
QUEUE_LENGTH = 1024  # events a subscriber may have pending before it is dropped
MAX_SUBSCRIBERS_PER_USER = 8

Value = str | int | float


@dataclass(frozen=True)
class Event:
    """One change of one object of one user."""

    id: int
    at: float  # seconds since the epoch
    user: str
    type: str  # "server" | "drive" | "resource" | "imaging"
    object: str  # the object's UUID (or address, for an IP)
    change: str  # "created" | "changed" | "destroyed" | "status" | "claimed" | "released" | …
    fields: dict[str, Value] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Value]:
        return {
            "id": self.id,
            "at": round(self.at, 6),
            "type": self.type,
            "object": self.object,
            "change": self.change,
            **self.fields,
        }


class Overflowed(Exception):
    """A subscriber fell too far behind and was dropped."""


END = None  # what a subscription's queue receives when the feed closes


class Subscription:
    """The events of one user, as they come; iterate with `next_event`."""

    def __init__(self, bus: EventBus, user: str, backlog: list[Event]) -> None:
        self._bus, self.user = bus, user
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LENGTH)
        self.overflowed = False
        for event in backlog:
            self._queue.put_nowait(event)

    def _offer(self, event: Event | None) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._bus.unsubscribe(self)
            # Make room for the end mark, so the reader wakes and learns it was dropped.
            self._queue.get_nowait()
            self._queue.put_nowait(END)

    async def next_event(self, timeout: float) -> Event | None:
        """The next event; None when the feed has closed. TimeoutError after `timeout` s."""
        # asyncio.timeout, not wait_for: before Python 3.12, wait_for swallowed a cancellation
        # (the stream's end) that came with an event, and the stream went on.
        async with asyncio.timeout(timeout):
            event = await self._queue.get()
        if event is END and self.overflowed:
            raise Overflowed(f"more than {QUEUE_LENGTH} events pending")
        return event

    def pending(self) -> list[Event]:
        """The events already waiting (none while the feed is open and quiet); the end mark
        stays queued for `next_event` to report."""
        batch = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is END:
                self._queue.put_nowait(END)
                break
            batch.append(event)
        return batch

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Fans each published event out to the subscriptions of its user and to listeners."""

    def __init__(self, audit: Callable[[Event], None] | None = None) -> None:
        self._audit = audit
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # ids and the ring, from any thread
        self._recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._subscriptions: dict[str, list[Subscription]] = {}
        # Each listener, and whether it hears the other nodes' events too.
        self._listeners: list[tuple[Callable[[Event], None], bool]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Where this node's events go to reach the other API nodes (PostgreSQL), if any.
        self.send_to_nodes: Callable[[Event], None] | None = None

    # -- publishing ----------------------------------------------------------------------

    def publish(self, user: str, type_: str, object_: str, change: str, **fields: Value) -> None:
        """Tell the platform that `object_` of `user` changed. Safe from any thread."""
        self._publish(Event(0, 0, user, type_, object_, change, fields), audit=True)

    @property
    def audited(self) -> bool:
        """Whether published events are written to the audit trail."""
        return self._audit is not None

    def publish_recorded(
        self, user: str, type_: str, object_: str, change: str, **fields: Value
    ) -> None:
        """Like `publish`, for a change whose audit row its caller wrote itself, in the
        transaction that made the change (`audit_path`): the event is delivered at once,
        without a transaction of its own before it."""
        self._publish(Event(0, 0, user, type_, object_, change, fields), audit=False)

    def publish_command(self, user: str, type_: str, object_: str, change: str) -> None:
        """The change a user's command made: its audit row is the command's own."""
        self._publish(Event(0, 0, user, type_, object_, change), audit=False)

    def relay(self, event: Event) -> None:
        """An event another API node published (its time kept). Safe from any thread."""
        self._publish(event, audit=False, relayed=True)

    def _publish(self, draft: Event, audit: bool, relayed: bool = False) -> None:
        with self._lock:
            at = draft.at if relayed else time.time()
            event = dataclasses.replace(draft, id=next(self._ids), at=at)
            self._recent.append(event)
        if audit and self._audit is not None:
            try:
                self._audit(event)
            except Exception:  # the trail must never change what happens
                log.exception("event=audit_failed event_id=%s", event.id)
        send = self.send_to_nodes
        if send is not None and not relayed:
            send(event)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(event, relayed)
        else:
            loop.call_soon_threadsafe(self._deliver, event, relayed)

    def _deliver(self, event: Event, relayed: bool = False) -> None:
        for listener, hears_relayed in self._listeners:
            if relayed and not hears_relayed:
                continue
            try:
                listener(event)
            except Exception:
                log.exception("event=event_listener_failed event_id=%s", event.id)
        for subscription in list(self._subscriptions.get(event.user, ())):
            subscription._offer(event)

    # -- subscribing (on the event loop) -------------------------------------------------

    def bind(self) -> None:
        """Deliver on the running loop from now on (the daemon calls this once it runs)."""
        self._loop = asyncio.get_running_loop()

    def add_listener(self, listener: Callable[[Event], None], relayed: bool = False) -> None:
        """Call `listener` on the loop with every event of every user made on this node
        (metrics: each node counts its own), and with `relayed` those of the other API nodes
        too (what acts on this node's state for any node's change: consoles)."""
        self._listeners.append((listener, relayed))

    def subscribe(self, user: str, after: int | None = None) -> Subscription:
        """A subscription to `user`'s events; with `after`, first those after that id that are
        still remembered."""
        if self._loop is None:
            self.bind()
        if self._closed:
            raise RuntimeError("the event feed is closed")
        mine = self._subscriptions.setdefault(user, [])
        if len(mine) >= MAX_SUBSCRIBERS_PER_USER:
            raise OverflowError(f"at most {MAX_SUBSCRIBERS_PER_USER} event streams per account")
        backlog = [e for e in self._recent_of(user) if after is not None and e.id > after]
        subscription = Subscription(self, user, backlog[-QUEUE_LENGTH:])
        mine.append(subscription)
        return subscription

    def _recent_of(self, user: str) -> Iterator[Event]:
        with self._lock:
            recent = list(self._recent)
        return (event for event in recent if event.user == user)

    def unsubscribe(self, subscription: Subscription) -> None:
        mine = self._subscriptions.get(subscription.user, [])
        if subscription in mine:
            mine.remove(subscription)
        if not mine:
            self._subscriptions.pop(subscription.user, None)

    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    def close(self) -> None:
        """End every subscription (the daemon is stopping)."""
        self._closed = True
        for subscriptions in list(self._subscriptions.values()):
            for subscription in list(subscriptions):
                subscription._offer(END)
        self._subscriptions.clear()


def audit_sink(record: Callable[..., Any]) -> Callable[[Event], None]:
    """Write events to the audit trail through `Audit.record`."""

    def write(event: Event) -> None:
        path = audit_path(event.type, event.object, event.change, event.fields)
        record(event.user, "", "EVENT", path, 200, "", event.object)

    return write


def audit_path(type_: str, object_: str, change: str, fields: dict[str, Value]) -> str:
    """The path of an event's audit row (method `EVENT`): `/drives/D/imaging/done`."""
    detail = fields.get("status") or fields.get("imaging") or ""
    path = f"/{type_}s/{object_}/{change}"
    return f"{path}/{detail}" if detail else path
