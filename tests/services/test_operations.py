"""The operation registry and its tables (drives', servers'): what may start while what runs,
the 409 each refusal gives, what waits its turn, and that nothing stays in flight after an
operation ends, fails or is cancelled."""

import asyncio

import pytest

from openhosting.errors import BusyError
from openhosting.services.operations import (
    ATTACH,
    DESTROY,
    DRIVE_RULES,
    DUMP,
    DUMPED_END,
    IMAGE,
    MOVE,
    READ,
    RESET,
    RESIZE,
    SERVER_RULES,
    SET,
    SHRINK,
    SHUTDOWN,
    SOURCE,
    START,
    STOP,
    WRITE,
    Operations,
)

DRIVE = "0f962616-2071-4173-be79-7dd084271edf"
OTHER = "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7c"

# Each kind in flight, and the actions it refuses with the words of the refusal (today's).
REFUSED = {
    READ: {SHRINK: "being read or written and cannot be shrunk"},
    WRITE: {
        SHRINK: "being read or written and cannot be shrunk",
        DESTROY: "being written and cannot be destroyed",
        IMAGE: "being written and cannot be imaged",
        SOURCE: "being written and cannot be a source",
    },
    RESIZE: {
        READ: "being resized and cannot be read",
        WRITE: "being resized and cannot be written",
        RESIZE: "being resized and cannot be resized",
        SET: "being resized and cannot be set",
        ATTACH: "being resized and cannot be attached",
        DESTROY: "being resized and cannot be destroyed",
        IMAGE: "being resized and cannot be imaged",
        SOURCE: "being resized and cannot be a source",
    },
}


def drives() -> Operations:
    return Operations("Drive", DRIVE_RULES)


@pytest.mark.parametrize("running", sorted(REFUSED))
@pytest.mark.parametrize("action", sorted(DRIVE_RULES))
def test_the_drive_rules_table(running: str, action: str) -> None:
    registry = drives()
    with registry.begin(DRIVE, running):
        refusal = REFUSED[running].get(action)
        if refusal is None:
            registry.check(DRIVE, action)
        else:
            with pytest.raises(BusyError, match=f"^Drive {DRIVE} is {refusal} now$"):
                registry.check(DRIVE, action)
        registry.check(OTHER, action)  # another drive is never concerned


def test_reads_share_writes_share_and_a_grow_waits_for_neither() -> None:
    registry = drives()
    with registry.begin(DRIVE, READ), registry.begin(DRIVE, READ), registry.begin(DRIVE, WRITE):
        assert registry.in_flight(DRIVE) == {READ: 2, WRITE: 1}
        with registry.begin(DRIVE, RESIZE):
            assert registry.in_flight(DRIVE) == {READ: 2, WRITE: 1, RESIZE: 1}
    assert registry.in_flight(DRIVE) == {} and len(registry) == 0


def test_a_refused_operation_holds_nothing() -> None:
    registry = drives()
    with registry.begin(DRIVE, RESIZE):
        with pytest.raises(BusyError):
            registry.begin(DRIVE, READ)
        assert registry.in_flight(DRIVE) == {RESIZE: 1}
    assert len(registry) == 0


def test_ending_twice_ends_once() -> None:
    registry = drives()
    first, second = registry.begin(DRIVE, READ), registry.begin(DRIVE, READ)
    first.end()
    first.end()
    assert registry.in_flight(DRIVE) == {READ: 1}
    with pytest.raises(BusyError, match="shrunk"):
        registry.check(DRIVE, SHRINK)
    second.end()
    registry.check(DRIVE, SHRINK)
    assert len(registry) == 0


def test_changing_words_name_the_resize_before_the_writes() -> None:
    registry = drives()
    with registry.begin(DRIVE, WRITE):
        assert registry.conflict(DRIVE, IMAGE) == "being written"
        with registry.begin(DRIVE, RESIZE):
            assert registry.conflict(DRIVE, IMAGE) == "being resized"
    assert registry.conflict(DRIVE, IMAGE) is None


async def test_a_conflicting_operation_is_refused_while_the_first_runs() -> None:
    registry = drives()
    started, finish = asyncio.Event(), asyncio.Event()

    async def resize() -> None:
        with registry.begin(DRIVE, RESIZE):
            started.set()
            await finish.wait()

    task = asyncio.create_task(resize())
    await started.wait()
    with pytest.raises(BusyError, match="being resized and cannot be written"):
        registry.begin(DRIVE, WRITE)
    finish.set()
    await task
    with registry.begin(DRIVE, WRITE):  # the resize is over
        pass
    assert len(registry) == 0


async def test_a_cancelled_or_failed_operation_leaves_the_registry_empty() -> None:
    registry = drives()
    started = asyncio.Event()

    async def read_forever() -> None:
        with registry.begin(DRIVE, READ), registry.begin(OTHER, RESIZE):
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(read_forever())
    await started.wait()
    assert len(registry) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(registry) == 0

    with pytest.raises(OSError), registry.begin(DRIVE, WRITE):
        raise OSError("the disk failed")
    assert len(registry) == 0
    registry.check(DRIVE, SHRINK)


def test_only_actions_that_last_are_held_in_flight() -> None:
    registry = drives()
    with pytest.raises(ValueError, match="never in flight"):
        registry.begin(DRIVE, DESTROY)
    assert len(registry) == 0


# Servers: every lifecycle action runs alone on its server, in the order the actions came.
SERVER = "5c1d3f0e-9a7b-4e2c-8d6f-1a2b3c4d5e6f"
SERVER_ACTIONS = (START, STOP, SHUTDOWN, RESET, SET, DESTROY, DUMP, MOVE)


def servers() -> Operations:
    return Operations("Server", SERVER_RULES)


def test_the_server_rules_table() -> None:
    assert {kind for kind, rule in SERVER_RULES.items() if rule.alone} == set(SERVER_ACTIONS)
    assert all(not rule.refused_by for rule in SERVER_RULES.values())  # waited for, not 409
    assert not SERVER_RULES[DUMPED_END].alone  # marks a dump's end, within the dump's turn


@pytest.mark.parametrize("second", SERVER_ACTIONS)
@pytest.mark.parametrize("first", SERVER_ACTIONS)
async def test_a_server_action_waits_for_the_one_before_it(first: str, second: str) -> None:
    registry = servers()
    order: list[str] = []
    finish = asyncio.Event()

    async def run(kind: str, uuid: str = SERVER) -> None:
        async with registry.turn(uuid, kind):
            order.append(kind)
            if kind == first and uuid == SERVER:
                await finish.wait()

    running = asyncio.create_task(run(first))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(run(second))
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == [first] and not waiting.done()
    assert registry.in_flight(SERVER) == {first: 1} and registry.waiting(SERVER) == 1
    await asyncio.wait_for(run(second, OTHER), 1)  # another server is never concerned
    finish.set()
    await asyncio.gather(running, waiting)
    assert order == [first, second, second] and len(registry) == 0


async def test_a_cancelled_turn_leaves_nothing_and_the_next_runs() -> None:
    registry = servers()
    started = asyncio.Event()

    async def start_forever() -> None:
        async with registry.turn(SERVER, START):
            started.set()
            await asyncio.sleep(60)

    async def stop() -> None:
        async with registry.turn(SERVER, STOP):
            pass

    starting = asyncio.create_task(start_forever())
    await started.wait()
    waiting, stopping = asyncio.create_task(stop()), asyncio.create_task(stop())
    await asyncio.sleep(0)
    assert registry.waiting(SERVER) == 2
    waiting.cancel()  # a request whose client went away while it waited
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(stopping, 1)
    assert len(registry) == 0 and registry.waiting(SERVER) == 0


async def test_only_actions_that_run_alone_take_a_turn() -> None:
    with pytest.raises(ValueError, match="does not run alone"):
        async with drives().turn(DRIVE, READ):
            pass
    registry = servers()
    with registry.begin(SERVER, DUMPED_END):
        assert registry.in_flight(SERVER) == {DUMPED_END: 1}
    assert len(registry) == 0
