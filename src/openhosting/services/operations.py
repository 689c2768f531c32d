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

An operation that outlives the call that began it (a read streamed by a response) is ended
by its `end()`, which is idempotent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from openhosting.errors import BusyError


@dataclass(frozen=True)
class Rule:
    """How action `verb` meets the operations in flight on its object.

    `refused_by`: the kinds in flight that refuse it, in the order they are asked about.
    `doing`: for an action that lasts, how its object is described meanwhile ("being read").
    `refusal`: what a refusal says the object is doing, when not the refusing kind's own
    `doing` (a shrink names reads and writes together)."""

    verb: str
    refused_by: tuple[str, ...] = ()
    doing: str = ""
    refusal: str | None = None


# Drives (see services/drives.py). Reads and writes run side by side; a resize refuses
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
# Servers' lifecycle actions get a table of their own here when they use the registry.


class Operation:
    """One operation in flight; a context manager, or ended by `end()` (idempotent)."""

    def __init__(self, registry: Operations, uuid: str, kind: str) -> None:
        self._registry, self.uuid, self.kind = registry, uuid, kind
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._registry._end(self.uuid, self.kind)

    def __enter__(self) -> Operation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.end()  # cancelled or failed alike: nothing stays in flight


class Operations:
    """The operations in flight on the objects of one kind (`noun`: "Drive"), by `rules`."""

    def __init__(self, noun: str, rules: Mapping[str, Rule]) -> None:
        self._noun, self._rules = noun, rules
        self._in_flight: dict[str, Counter[str]] = {}

    def in_flight(self, uuid: str) -> dict[str, int]:
        """The kinds in flight on object `uuid` and how many of each."""
        return dict(self._in_flight.get(uuid, {}))

    def __len__(self) -> int:
        """How many objects have operations in flight."""
        return len(self._in_flight)

    def conflict(self, uuid: str, action: str) -> str | None:
        """What object `uuid` is doing that refuses `action` ("being resized"), or None."""
        rule = self._rules[action]
        running = self._in_flight.get(uuid)
        if running:
            for kind in rule.refused_by:
                if running[kind]:
                    return rule.refusal or self._rules[kind].doing
        return None

    def check(self, uuid: str, action: str) -> None:
        """409 busy if `action` may not start on object `uuid` now."""
        if doing := self.conflict(uuid, action):
            verb = self._rules[action].verb
            raise BusyError(f"{self._noun} {uuid} is {doing} and cannot be {verb} now")

    def begin(self, uuid: str, kind: str) -> Operation:
        """Check `kind`, then hold it in flight on object `uuid` until the operation ends."""
        if not self._rules[kind].doing:
            raise ValueError(f"{kind} is an action only checked, never in flight")
        self.check(uuid, kind)
        self._in_flight.setdefault(uuid, Counter())[kind] += 1
        return Operation(self, uuid, kind)

    def _end(self, uuid: str, kind: str) -> None:
        running = self._in_flight[uuid]
        running[kind] -= 1
        if running[kind] <= 0:
            del running[kind]
        if not running:
            del self._in_flight[uuid]
