"""Operations in flight per object (a drive, a server): what may start while others run.

An object has operations in flight of named kinds (two reads, one write, …). An action
asks the registry first: it is refused (409 busy) when an operation of a kind its rule names
is in flight on the object, and, when it is itself something that lasts, it is entered and
stays in flight until it ends. The rules of one kind of object are one table (`Rule` per
action); the registry knows nothing of drives or servers beyond it. Everything runs on the
event loop, so a check and the entry that follows it without an `await` between them are
atomic.

    with drives_operations.begin(uuid, RESIZE):
        await resize_the_file()

An action whose rule says `alone` is not refused but waits its turn: the actions that run
alone on one object run one at a time, in the order they came (a server's stop that comes
during its start runs once the start is over):

    async with servers_operations.turn(uuid, STOP):
        await stop_the_vm()

An operation that outlives the call that began it (a read streamed by a response) is ended
by its `end()`, which is idempotent.

With several API nodes on one PostgreSQL (`nodes`: services/cluster/node_operations.py) the checks
also count the other nodes' operations, and what lasts is entered in the database as well,
so the same refusals hold across nodes. An `alone` action waits while another node runs
one on its object (looking again every TURN_POLL_SECONDS, at most TURN_WAIT_SECONDS): the
turn is kept across nodes, its order only within each.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import Connection

from openhosting.errors import BusyError
from openhosting.services.cluster.node_operations import NodeOperations

# How often an `alone` action looks whether another node's turn on its object is over, and
# for how long at most before it is refused (409 busy).
TURN_POLL_SECONDS = 0.1
TURN_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Rule:
    """How action `verb` meets the operations in flight on its object.

    `refused_by`: the kinds in flight that refuse it, in the order they are asked about.
    `doing`: for an action that lasts, how its object is described meanwhile ("being read").
    `refusal`: what a refusal says the object is doing, when not the refusing kind's own
    `doing` (a shrink names reads and writes together).
    `alone`: it waits (`Operations.turn`) until no other action that runs alone runs on its
    object, then runs in its turn."""

    verb: str
    refused_by: tuple[str, ...] = ()
    doing: str = ""
    refusal: str | None = None
    alone: bool = False


# Drives (see services/drives/drives.py). Reads and writes run side by side; a resize refuses
# everything that touches the bytes; a shrink waits for reads (they promised a length) and
# writes, a destroy or imaging for writes; a grow waits for neither.
READ, WRITE, RESIZE = "read", "write", "resize"  # operations that last
SET, SHRINK, ATTACH, DESTROY, IMAGE, SOURCE = (  # actions only checked
    "set", "shrink", "attach", "destroy", "image", "source",
)  # fmt: skip
DRIVE_RULES: Mapping[str, Rule] = {
    READ: Rule("read", (RESIZE,), doing="being read"),
    WRITE: Rule("written", (RESIZE,), doing="being written"),
    RESIZE: Rule("resized", (RESIZE,), doing="being resized"),
    SET: Rule("set", (RESIZE,)),
    SHRINK: Rule("shrunk", (READ, WRITE), refusal="being read or written"),
    ATTACH: Rule("attached", (RESIZE,)),
    DESTROY: Rule("destroyed", (RESIZE, WRITE)),
    IMAGE: Rule("imaged", (RESIZE, WRITE)),
    SOURCE: Rule("a source", (RESIZE, WRITE)),
}

# Servers (see services/servers/servers.py). Every lifecycle action runs alone on its server, in the
# order the actions came: a destroy or stop that comes during a start waits for it (and then
# finds the server active), two starts do not both claim the drives, a `set` never changes a
# configuration a start is reading. A start of a dumped server restores it (START too); a dump
# is the operator's host suspend. None of them is refused for what runs: reads (info, lists,
# the console) take no turn. DUMPED_END is in flight while a VM whose state was saved ends, so
# that its end keeps the server `dumped` (services/servers/server_lifecycle.py). SET and DESTROY are
# the drives' words too: a kind is a word of its own table.
START, STOP, SHUTDOWN, RESET, DUMP = "start", "stop", "shutdown", "reset", "dump"
MOVE = "move"  # a live migration to another host (a host drain: services/servers/server_moves.py)
DUMPED_END = "dumped-end"
SERVER_RULES: Mapping[str, Rule] = {
    START: Rule("started", doing="being started", alone=True),
    STOP: Rule("stopped", doing="being stopped", alone=True),
    SHUTDOWN: Rule("shut down", doing="being shut down", alone=True),
    RESET: Rule("reset", doing="being reset", alone=True),
    SET: Rule("set", doing="being set", alone=True),
    DESTROY: Rule("destroyed", doing="being destroyed", alone=True),
    DUMP: Rule("dumped", doing="being dumped", alone=True),
    MOVE: Rule("moved", doing="being moved to another host", alone=True),
    DUMPED_END: Rule("ended", doing="ending with its state saved"),
}


class Operation:
    """One operation in flight; a context manager, or ended by `end()` (idempotent)."""

    def __init__(
        self, registry: Operations, uuid: str, kind: str, ticket: int | None = None
    ) -> None:
        self._registry, self.uuid, self.kind = registry, uuid, kind
        self._ticket = ticket  # its row among the nodes' operations (PostgreSQL), if any
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._registry._end(self.uuid, self.kind, self._ticket)

    def __enter__(self) -> Operation:
        return self

    def __exit__(self, *how_it_ended: object) -> None:
        self.end()  # ended, cancelled or failed alike: nothing stays in flight


class Operations:
    """The operations in flight on the objects of one kind (`noun`: "Drive"), by `rules`."""

    def __init__(
        self, noun: str, rules: Mapping[str, Rule], nodes: NodeOperations | None = None
    ) -> None:
        self._noun, self._rules = noun, rules
        self._nodes = nodes  # the other API nodes' operations (PostgreSQL); None: only ours
        self._in_flight: dict[str, Counter[str]] = {}
        # Per object, the turn of its `alone` actions and how many run or wait for it; made
        # for the first and dropped after the last, so that it never outgrows what runs.
        self._turns: dict[str, _Turn] = {}

    def in_flight(self, uuid: str) -> dict[str, int]:
        """The kinds in flight on object `uuid` and how many of each."""
        return dict(self._in_flight.get(uuid, {}))

    def anywhere(self, uuid: str) -> Counter[str]:
        """The kinds in flight on object `uuid` here and through the other API nodes."""
        running = Counter(self._in_flight.get(uuid, {}))
        if self._nodes is not None:
            running += self._nodes.others(uuid)
        return running

    def under_way(self) -> set[str]:
        """The objects with an operation in flight, here or through another API node.

        The one rule of the reconciles of what a host holds (its VMs, NICs, NBD exports and
        drive files; services/servers/server_lifecycle.py, services/drives/drive_orphans.py): what
        they find of such an object is left alone, however it looks. An operation makes things
        before the rows that name them (a move's VM waiting for its state on the target,
        its NICs there, its drive files being mirrored; a start's export and NICs) and
        removes its own on failure; a reconcile that skipped them comes again at the next
        look, once the operation is over."""
        objects = set(self._in_flight)
        if self._nodes is not None:
            objects |= self._nodes.objects_of_others()
        return objects

    def waiting(self, uuid: str) -> int:
        """How many actions wait for their turn on object `uuid`."""
        turn = self._turns.get(uuid)
        return turn.users - turn.lock.locked() if turn is not None else 0

    def __len__(self) -> int:
        """How many objects have operations in flight or waiting for their turn."""
        return len(self._in_flight.keys() | self._turns.keys())

    @property
    def across_nodes(self) -> bool:
        """Whether other API nodes' operations count (PostgreSQL)."""
        return self._nodes is not None

    def conflict(self, uuid: str, action: str, within: Connection | None = None) -> str | None:
        """What object `uuid` is doing, here or through another node, that refuses `action`
        ("being resized"), or None. `within` the transaction that then does the action, no
        other node begins an operation on the object until it ends."""
        if doing := self._conflict_in(self._in_flight.get(uuid), action):
            return doing
        if self._nodes is not None and (self._rules[action].refused_by or within is not None):
            return self._conflict_in(self._nodes.others(uuid, within), action)
        return None

    def _conflict_in(self, running: Counter[str] | None, action: str) -> str | None:
        rule = self._rules[action]
        if running:
            for kind in rule.refused_by:
                if running[kind]:
                    return rule.refusal or self._rules[kind].doing
        return None

    def check(self, uuid: str, action: str, within: Connection | None = None) -> None:
        """409 busy if `action` may not start on object `uuid` now (`within`: see
        `conflict`)."""
        if doing := self.conflict(uuid, action, within):
            self._refuse(uuid, action, doing)

    def _refuse(self, uuid: str, action: str, doing: str) -> NoReturn:
        verb = self._rules[action].verb
        raise BusyError(f"{self._noun} {uuid} is {doing} and cannot be {verb} now")

    def begin(self, uuid: str, kind: str, within: Connection | None = None) -> Operation:
        """Check `kind`, then hold it in flight on object `uuid` until the operation ends.
        `within` a transaction, the other nodes see it once that commits."""
        if not self._rules[kind].doing:
            raise ValueError(f"{kind} is an action only checked, never in flight")
        if doing := self._conflict_in(self._in_flight.get(uuid), kind):
            self._refuse(uuid, kind, doing)
        ticket = None
        if self._nodes is not None:
            ticket = self._nodes.enter(uuid, kind, lambda others: self._check_others(
                uuid, kind, others
            ), within)  # fmt: skip
        self._in_flight.setdefault(uuid, Counter())[kind] += 1
        return Operation(self, uuid, kind, ticket)

    def begin_if_idle(self, uuid: str, kind: str) -> Operation | None:
        """`kind` begun on object `uuid` if nothing runs on it here, nor an action that runs
        alone through another node; else None (for a reconcile, which looks again later)."""
        if uuid in self._in_flight or uuid in self._turns:
            return None
        try:
            return self.begin(uuid, kind)
        except (BusyError, _OtherNodesTurn):
            return None

    def _check_others(self, uuid: str, kind: str, others: Counter[str]) -> None:
        """Refuse `kind` for what the other nodes run on `uuid` (in their transaction)."""
        if doing := self._conflict_in(others, kind):
            self._refuse(uuid, kind, doing)
        if self._rules[kind].alone and any(self._rules[other].alone for other in others):
            raise _OtherNodesTurn()

    @asynccontextmanager
    async def turn(self, uuid: str, kind: str) -> AsyncIterator[Operation]:
        """Wait until no other action that runs alone runs on object `uuid` (those that came
        before run first), then begin `kind`, held until the block ends. A cancelled wait
        leaves nothing behind."""
        if not self._rules[kind].alone:
            raise ValueError(f"{kind} does not run alone: begin it")
        turn = self._turns.get(uuid) or self._turns.setdefault(uuid, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                with await self._begin_in_turn(uuid, kind) as operation:
                    yield operation
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[uuid]

    async def _begin_in_turn(self, uuid: str, kind: str) -> Operation:
        """Begin `kind` once no other node runs an `alone` action on `uuid` either."""
        deadline = time.monotonic() + TURN_WAIT_SECONDS
        while True:
            try:
                return self.begin(uuid, kind)
            except _OtherNodesTurn:
                if time.monotonic() >= deadline:
                    self._refuse(uuid, kind, "busy through another API node")
                await asyncio.sleep(TURN_POLL_SECONDS)

    def _end(self, uuid: str, kind: str, ticket: int | None) -> None:
        if ticket is not None and self._nodes is not None:
            self._nodes.leave(ticket)
        running = self._in_flight[uuid]
        running[kind] -= 1
        if running[kind] <= 0:
            del running[kind]
        if not running:
            del self._in_flight[uuid]


class _OtherNodesTurn(Exception):
    """Another node runs an `alone` action on the object: wait, do not refuse."""


class _Turn:
    """The turn of one object's `alone` actions: a FIFO lock, and how many hold or want it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
