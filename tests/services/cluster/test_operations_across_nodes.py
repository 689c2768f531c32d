"""Operations under way across API nodes on one PostgreSQL (services/cluster/node_operations.py):
two registries of two nodes refuse each other's conflicting operations with the words one node
gives, take turns on a server, and a node that stops renewing frees its objects once its
lease has run out."""

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from openhosting.errors import BusyError
from openhosting.services import operations as operations_module
from openhosting.services.cluster.node_operations import NodeOperations
from openhosting.services.operations import (
    DESTROY,
    DRIVE_RULES,
    MOVE,
    RESIZE,
    SERVER_RULES,
    SHRINK,
    START,
    STOP,
    WRITE,
    Operations,
)
from openhosting.store.database import create_store_engine
from openhosting.store.notifications import CHANGES, Listener
from tests.services.test_operations import REFUSED

DRIVE = "0f962616-2071-4173-be79-7dd084271edf"
SERVER = "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7c"
OTHER_SERVER = "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7d"
LEASE = 1.0  # seconds


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = create_store_engine(postgres_url)
    yield made
    made.dispose()


@pytest.fixture
def nodes(engine: Engine) -> Iterator[tuple[NodeOperations, NodeOperations]]:
    a, b = NodeOperations(engine, "node-a", LEASE), NodeOperations(engine, "node-b", LEASE)
    yield a, b
    a.close()
    b.close()


def _rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT count(*) FROM operations").scalar_one())


@pytest.mark.parametrize("running", sorted(REFUSED))
def test_a_drive_operation_through_one_node_refuses_what_it_refuses_within_one(
    nodes: tuple[NodeOperations, NodeOperations], running: str
) -> None:
    a, b = Operations("Drive", DRIVE_RULES, nodes[0]), Operations("Drive", DRIVE_RULES, nodes[1])
    with a.begin(DRIVE, running):
        for action, refusal in REFUSED[running].items():
            with pytest.raises(BusyError, match=f"^Drive {DRIVE} is {refusal} now$"):
                b.check(DRIVE, action)
            if DRIVE_RULES[action].doing:  # what lasts is refused when it begins, too
                with pytest.raises(BusyError, match=f"^Drive {DRIVE} is {refusal} now$"):
                    b.begin(DRIVE, action)
        assert b.in_flight(DRIVE) == {}  # nothing of a refusal stays
    # Ended through A: B may do all of it.
    for action in REFUSED[running]:
        b.check(DRIVE, action)


def test_what_one_node_runs_is_its_row_until_it_ends(
    engine: Engine, nodes: tuple[NodeOperations, NodeOperations]
) -> None:
    a, b = Operations("Drive", DRIVE_RULES, nodes[0]), Operations("Drive", DRIVE_RULES, nodes[1])
    with a.begin(DRIVE, WRITE), b.begin(DRIVE, WRITE):  # writes share, across nodes too
        assert _rows(engine) == 2
        with pytest.raises(BusyError, match="being read or written and cannot be shrunk"):
            a.check(DRIVE, SHRINK)
    assert _rows(engine) == 0
    b.check(DRIVE, DESTROY)


async def test_what_is_under_way_counts_the_other_nodes_objects_while_they_run(
    nodes: tuple[NodeOperations, NodeOperations],
) -> None:
    """The reconciles' rule (a server in an operation's hand is left alone) holds for an
    operation of another API node: a node starting while another moves a server must not
    take the move's VMs for orphans."""
    a = Operations("Server", SERVER_RULES, nodes[0])
    b = Operations("Server", SERVER_RULES, nodes[1])
    assert a.under_way() == set() == b.under_way()
    async with b.turn(SERVER, START), a.turn(OTHER_SERVER, MOVE):
        assert a.under_way() == {SERVER, OTHER_SERVER}  # the other node's, and its own
        assert b.under_way() == {SERVER, OTHER_SERVER}
    assert a.under_way() == set() == b.under_way()


def test_a_node_that_stops_renewing_frees_its_objects_after_its_lease(
    engine: Engine, nodes: tuple[NodeOperations, NodeOperations]
) -> None:
    a, b = Operations("Drive", DRIVE_RULES, nodes[0]), Operations("Drive", DRIVE_RULES, nodes[1])
    writing = a.begin(DRIVE, WRITE)
    time.sleep(LEASE * 2)  # renewed meanwhile: still held
    with pytest.raises(BusyError, match="being read or written and cannot be shrunk"):
        b.check(DRIVE, SHRINK)
    nodes[0].close()  # as a node killed: nothing renews its row any more
    deadline = time.monotonic() + LEASE * 3
    while True:
        try:
            b.check(DRIVE, SHRINK)
            break
        except BusyError:
            assert time.monotonic() < deadline, "the dead node's write held the drive"
            time.sleep(0.05)
    writing.end()


async def test_a_server_action_through_another_node_waits_for_the_turn_of_the_first(
    nodes: tuple[NodeOperations, NodeOperations], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations_module, "TURN_POLL_SECONDS", 0.02)
    a = Operations("Server", SERVER_RULES, nodes[0])
    b = Operations("Server", SERVER_RULES, nodes[1])
    order: list[str] = []
    starting = asyncio.Event()

    async def start_through_a() -> None:
        async with a.turn(SERVER, START):
            starting.set()
            order.append("start")
            await asyncio.sleep(0.3)
            order.append("started")

    async def stop_through_b() -> None:
        await starting.wait()
        async with b.turn(SERVER, STOP):
            order.append("stop")

    await asyncio.wait_for(asyncio.gather(start_through_a(), stop_through_b()), 5)
    assert order == ["start", "started", "stop"]  # not refused: it waited its turn


async def test_a_turn_waited_for_too_long_is_busy(
    nodes: tuple[NodeOperations, NodeOperations], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations_module, "TURN_POLL_SECONDS", 0.02)
    monkeypatch.setattr(operations_module, "TURN_WAIT_SECONDS", 0.2)
    a = Operations("Server", SERVER_RULES, nodes[0])
    b = Operations("Server", SERVER_RULES, nodes[1])
    async with a.turn(SERVER, START):
        with pytest.raises(BusyError, match="busy through another API node and cannot be"):
            async with b.turn(SERVER, STOP):
                pass
    async with b.turn(SERVER, STOP):  # free again
        pass


def test_operation_rows_tell_no_cache_of_a_change(
    engine: Engine, nodes: tuple[NodeOperations, NodeOperations]
) -> None:
    # The other nodes' caches (oh_changes) hold no operation: entering and leaving one, and
    # renewing it, must not make them read everything again at each drive write.
    heard: list[str] = []
    connected = threading.Event()
    listener = Listener(
        engine, [CHANGES], lambda _c, payload: heard.append(payload),
        lambda up: connected.set() if up else None,
    )  # fmt: skip
    listener.start()
    try:
        assert connected.wait(10)
        a = Operations("Drive", DRIVE_RULES, nodes[0])
        with a.begin(DRIVE, WRITE):
            time.sleep(LEASE)  # renewed meanwhile
        with engine.begin() as connection:  # a real write: heard (the mark of the end)
            connection.exec_driver_sql("CREATE TEMP TABLE t (x int)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        deadline = time.monotonic() + 5
        while not heard:
            assert time.monotonic() < deadline, "the write's oh_changes never came"
            time.sleep(0.05)
        assert len(heard) == 1, heard  # the write's only
    finally:
        listener.stop()


def test_an_action_checked_in_a_transaction_holds_the_object_until_it_commits(
    engine: Engine, nodes: tuple[NodeOperations, NodeOperations]
) -> None:
    # A destroy through B checks, then deletes in one transaction: a write through A that
    # begins meanwhile waits for its commit (and then finds the drive gone), never slips in
    # between the check and the delete.
    a, b = Operations("Drive", DRIVE_RULES, nodes[0]), Operations("Drive", DRIVE_RULES, nodes[1])
    begun = threading.Event()

    def write_through_a() -> None:
        a.begin(DRIVE, WRITE).end()
        begun.set()

    with engine.begin() as connection:
        b.check(DRIVE, DESTROY, connection)
        writer = threading.Thread(target=write_through_a)
        writer.start()
        assert not begun.wait(0.5)  # held by the destroy's transaction
    assert begun.wait(5)
    writer.join(5)

    # A resize begun in B's transaction (a shrink's) counts for A once it commits.
    with engine.begin() as connection:
        b.check(DRIVE, SHRINK, connection)
        resizing = b.begin(DRIVE, RESIZE, connection)
    with pytest.raises(BusyError, match="being resized and cannot be written"):
        a.begin(DRIVE, WRITE)
    resizing.end()
    a.begin(DRIVE, WRITE).end()
