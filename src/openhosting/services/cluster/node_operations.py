"""Operations under way shared by the API nodes of one PostgreSQL (the `operations` rows).

`Operations` (services/operations.py) keeps what runs in this process; with several nodes
on one database it also asks this for what the others run, and enters its own lasting
operations here, so that a write through one node and a resize through another are excluded
from each other as they are within one node. Each row is leased: a thread renews this
node's rows every third of the lease, and a node that dies (SIGKILL, a lost host) stops
renewing, so its objects are free for the others once the lease has run out. Expired rows
are dropped by whichever node renews next.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.store import notifications
from openhosting.store import operations as operation_rows

log = logging.getLogger("openhosting.operations")


class NodeOperations:
    """This node's operations in the database, and the other nodes' as it reads them."""

    def __init__(self, engine: Engine, owner: str, lease_seconds: float) -> None:
        self._engine, self.owner, self.lease_seconds = engine, owner, lease_seconds
        self._lock = threading.Lock()
        self._live: set[int] = set()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def others(self, uuid: str, within: Connection | None = None) -> Counter[str]:
        """The kinds of the other nodes' live operations on object `uuid`. `within` a
        transaction, the object is held until it ends: no other node begins an operation on
        it meanwhile (an action checked, then done in that transaction, as a destroy)."""
        if within is not None:
            operation_rows.lock_object(within, uuid)
            return operation_rows.others_in_flight(within, uuid, self.owner, time.time())
        with self._engine.connect() as connection:
            return operation_rows.others_in_flight(connection, uuid, self.owner, time.time())

    def objects_of_others(self) -> set[str]:
        """The objects with a live operation of another node (one query)."""
        with self._engine.connect() as connection:
            return operation_rows.objects_of_others(connection, self.owner, time.time())

    def enter(
        self,
        uuid: str,
        kind: str,
        check: Callable[[Counter[str]], None],
        within: Connection | None = None,
    ) -> int:
        """Run `check` on the other nodes' operations on `uuid` (it raises to refuse), then
        hold `kind` there for this node: the row's id. Both in one transaction holding the
        object (the caller's, `within`, if given: the row counts once it commits), so another
        node entering at once sees this one's row."""
        with contextlib.ExitStack() as stack:
            connection = within or stack.enter_context(self._engine.begin())
            operation_rows.lock_object(connection, uuid)
            now = time.time()
            check(operation_rows.others_in_flight(connection, uuid, self.owner, now))
            ticket = operation_rows.enter(
                connection, uuid, kind, self.owner, now + self.lease_seconds
            )
            if within is None:
                notifications.unheard(connection)
        with self._lock:
            self._live.add(ticket)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="operations", daemon=True)
                self._renewer.start()
        return ticket

    def leave(self, ticket: int) -> None:
        """Operation `ticket` ended. A row that cannot be deleted now is renewed no more: it
        counts for nothing once its lease runs out."""
        with self._lock:
            self._live.discard(ticket)
        try:
            with self._engine.begin() as connection:
                operation_rows.leave(connection, [ticket])
                notifications.unheard(connection)
        except SQLAlchemyError as error:
            log.error("event=operation_not_left ticket=%s error=%s", ticket, error)

    def close(self) -> None:
        """Stop renewing (the daemon stops; what still runs is ended by its own exits)."""
        self._stop.set()
        renewer = self._renewer
        if renewer is not None:
            renewer.join(timeout=self.lease_seconds)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                live = set(self._live)
            if not live:
                continue  # dead nodes' rows count for nothing; dropped at a later round
            now = time.time()
            try:
                with self._engine.begin() as connection:
                    operation_rows.renew(connection, live, now + self.lease_seconds)
                    operation_rows.forget_expired(connection, now - self.lease_seconds)
                    notifications.unheard(connection)
            except SQLAlchemyError as error:  # the next round tries again, within the lease
                log.warning("event=operation_leases_not_renewed error=%s", error)
