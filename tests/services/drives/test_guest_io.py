"""Folding a guest's block counters into its drives' I/O counters: the arithmetic (pure), and
the fold on a real SQLite database (each byte counted once, whatever folds repeat)."""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from openhosting.hypervisor.driver import BlockStats, StartRequest
from openhosting.hypervisor.spec import VmSpec
from openhosting.services.drives.drives import drive_info
from openhosting.services.drives.guest_io import ZERO, fold, fold_guest_io
from openhosting.services.servers import server_lifecycle
from openhosting.store import drives as drive_store
from openhosting.store import servers as server_store
from openhosting.store import users as user_store
from openhosting.store.database import open_engine
from tests.services.fake_platform import fake_platform

USER = "11111111-1111-4111-8111-111111111111"
DRIVE = "22222222-2222-4222-8222-222222222222"
OTHER_DRIVE = "33333333-3333-4333-8333-333333333333"
SERVER = "44444444-4444-4444-8444-444444444444"
OTHER_SERVER = "55555555-5555-4555-8555-555555555555"


# -- the arithmetic ------------------------------------------------------------------------


def test_a_fold_adds_what_qemu_counted_since_the_mark_and_moves_the_mark_there() -> None:
    delta, mark = fold(BlockStats(100, 2, 50, 1), BlockStats(4196, 10, 1074, 5))
    assert delta == BlockStats(4096, 8, 1024, 4)
    assert mark == BlockStats(4196, 10, 1074, 5)


def test_a_first_fold_of_a_new_claim_adds_everything_qemu_counted() -> None:
    assert fold(ZERO, BlockStats(7, 1, 9, 2)) == (BlockStats(7, 1, 9, 2), BlockStats(7, 1, 9, 2))


def test_folding_the_same_reading_again_adds_nothing() -> None:
    _, mark = fold(ZERO, BlockStats(7, 1, 9, 2))
    assert fold(mark, BlockStats(7, 1, 9, 2)) == (ZERO, mark)


def test_an_older_reading_overtaken_by_a_newer_fold_adds_nothing_and_keeps_the_mark() -> None:
    mark = BlockStats(8192, 4, 4096, 2)
    delta, kept = fold(mark, BlockStats(4096, 2, 4096, 3))
    assert delta == BlockStats(0, 0, 0, 1)  # only the counter that did grow
    assert kept == BlockStats(8192, 4, 4096, 3)


# -- on a real database --------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(tmp_path / "state.db")
    with engine.begin() as connection:
        user_store.insert_user(connection, uuid=USER, key_hash="0" * 64, created_at=0)
        for drive in (DRIVE, OTHER_DRIVE):
            drive_store.insert_drive(
                connection, uuid=drive, user=USER, size=1 << 20, cipher="none", created_at=0
            )
            # As if the API had moved some bytes already.
            drive_store.add_io_counters(connection, drive, "read", 1000)
        for server in (SERVER, OTHER_SERVER):
            server_store.insert_server(connection, uuid=server, user=USER, config="{}",
                                       created_at=0)  # fmt: skip
    yield engine
    engine.dispose()


def start(engine: Engine, server: str, devices: list[tuple[str, str]]) -> None:
    """What starting a server does to the claims: new ones, from 0."""
    with engine.begin() as connection:
        server_store.remove_guest_claims(connection, server)
        server_store.add_guest_claims(connection, USER, server, [(d, s, False) for d, s in devices])


def counters(engine: Engine, drive: str) -> tuple[object, ...]:
    with engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None
    info = drive_info(row, [])
    return (info["read:bytes"], info["read:requests"], info["write:bytes"],
            info["write:requests"])  # fmt: skip


def test_drive_counters_are_api_io_plus_guest_io_counted_once_across_repeated_folds(
    engine: Engine,
) -> None:
    start(engine, SERVER, [(DRIVE, "ide:0:0"), (OTHER_DRIVE, "ide:0:1")])
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(4096, 8, 512, 1)}})
    assert counters(engine, DRIVE) == (1000 + 4096, 1 + 8, 512, 1)
    assert counters(engine, OTHER_DRIVE) == (1000, 1, 0, 0)  # no reading for its slot

    # Again with the same reading (e.g. the next daemon, once it adopted the VM): nothing.
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(4096, 8, 512, 1)}})
    assert counters(engine, DRIVE) == (1000 + 4096, 1 + 8, 512, 1)

    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(8192, 9, 512, 1),
                                    "ide:0:1": BlockStats(0, 0, 2048, 4)}})  # fmt: skip
    assert counters(engine, DRIVE) == (1000 + 8192, 1 + 9, 512, 1)
    assert counters(engine, OTHER_DRIVE) == (1000, 1, 2048, 4)


def test_a_restarted_vm_counts_from_zero_again_and_its_io_adds_to_the_drive(
    engine: Engine,
) -> None:
    start(engine, SERVER, [(DRIVE, "ide:0:0")])
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(4096, 8, 512, 1)}})
    start(engine, SERVER, [(DRIVE, "ide:0:0")])  # a new QEMU: its counters start at 0
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(1024, 2, 0, 0)}})
    assert counters(engine, DRIVE) == (1000 + 4096 + 1024, 1 + 8 + 2, 512, 1)


def test_two_servers_sharing_a_drive_each_add_their_own_io(engine: Engine) -> None:
    start(engine, SERVER, [(DRIVE, "ide:0:0")])
    start(engine, OTHER_SERVER, [(DRIVE, "block:0")])
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(100, 1, 0, 0)},
                           OTHER_SERVER: {"block:0": BlockStats(200, 2, 0, 0)}})  # fmt: skip
    assert counters(engine, DRIVE) == (1000 + 300, 1 + 3, 0, 0)


def test_a_server_no_longer_holding_the_drive_adds_nothing(engine: Engine) -> None:
    # The VM ended (its claims went) between the reading and the fold.
    fold_guest_io(engine, {SERVER: {"ide:0:0": BlockStats(4096, 8, 512, 1)}})
    assert counters(engine, DRIVE) == (1000, 1, 0, 0)


# -- from the running VMs --------------------------------------------------------------------


async def test_a_vm_whose_monitor_is_stuck_holds_no_fold_and_the_others_still_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_lifecycle, "GUEST_IO_QUERY_SECONDS", 0.2)
    with fake_platform(tmp_path) as (platform, hypervisor):
        lifecycle = platform.servers.lifecycle
        with platform.engine.begin() as connection:
            user_store.insert_user(connection, uuid=USER, key_hash="0" * 64, created_at=0)
            drive_store.insert_drive(
                connection, uuid=DRIVE, user=USER, size=1 << 20, cipher="none", created_at=0
            )
            for server in (SERVER, OTHER_SERVER):
                server_store.insert_server(connection, uuid=server, user=USER, config="{}",
                                           created_at=0)  # fmt: skip
        start(platform.engine, SERVER, [(DRIVE, "ide:0:0")])
        start(platform.engine, OTHER_SERVER, [(DRIVE, "ide:0:0")])
        for server in (SERVER, OTHER_SERVER):
            await hypervisor.start(StartRequest(VmSpec(server, 1, 64, tmp_path / server)))
            lifecycle.active[server] = USER
        hypervisor.qmp_timeout = 3600  # a monitor that never answers
        hypervisor.stick(SERVER)
        hypervisor.vm(OTHER_SERVER).blockstats = {"ide:0:0": BlockStats(512, 1, 0, 0)}
        began = time.monotonic()
        await asyncio.wait_for(lifecycle.fold_guest_io(), 5)
        await asyncio.wait_for(lifecycle.fold_guest_io(SERVER), 5)  # as a stop does first
        assert time.monotonic() - began < 2
        assert counters(platform.engine, DRIVE) == (512, 1, 0, 0)


async def test_a_guest_that_powered_off_is_asked_for_its_last_counters_longer_than_a_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that powered itself off is held by its driver while the handler runs: its
    last counters are waited for longer than a periodic fold's (on a busy host QEMU answered
    after that fold's limit, and the I/O since the last fold was lost)."""
    monkeypatch.setattr(server_lifecycle, "GUEST_IO_QUERY_SECONDS", 0.1)
    with fake_platform(tmp_path) as (platform, hypervisor):
        lifecycle = platform.servers.lifecycle
        with platform.engine.begin() as connection:
            user_store.insert_user(connection, uuid=USER, key_hash="0" * 64, created_at=0)
            drive_store.insert_drive(
                connection, uuid=DRIVE, user=USER, size=1 << 20, cipher="none", created_at=0
            )
            server_store.insert_server(
                connection, uuid=SERVER, user=USER, created_at=0,
                config=json.dumps({"name": "w", "cpu": "500", "mem": "64", "ide:0:0": DRIVE}),
            )  # fmt: skip
        start(platform.engine, SERVER, [(DRIVE, "ide:0:0")])
        await hypervisor.start(StartRequest(VmSpec(SERVER, 1, 64, tmp_path / SERVER)))
        lifecycle.active[SERVER] = USER
        hypervisor.vm(SERVER).blockstats = {"ide:0:0": BlockStats(512, 1, 2048, 2)}
        answer = hypervisor.blockstats

        async def slow_answer(server: str) -> dict[str, BlockStats]:
            await asyncio.sleep(0.5)  # longer than a fold waits, shorter than ENDING_TIMEOUT
            return dict(await answer(server))

        monkeypatch.setattr(hypervisor, "blockstats", slow_answer)
        await asyncio.wait_for(hypervisor.guest_power_off(SERVER), 10)
        assert counters(platform.engine, DRIVE) == (512, 1, 2048, 2)
