"""The hosts table (store/hosts.py, migration 0012) on a real SQLite file: registration,
heartbeats, drives placed per host and tier, and drives from before hosts."""

import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine, create_engine, insert, select

from openhosting.store import hosts as host_store
from openhosting.store.database import open_engine
from openhosting.store.records import HostRecord
from openhosting.store.tables import drives, users
from tests.store.old_schema import upgrade_with_user

USER = "11111111-1111-4111-8111-111111111111"


def host(name: str, cores: int = 4, at: float = 1000.0) -> HostRecord:
    return HostRecord(
        name=name,
        state="online",
        cores=cores,
        core_mhz=2500,
        memory_mb=7000,
        disk_bytes_by_tier={"disk": 5 << 40, "ssd": 1 << 40},
        heartbeat_at=at,
        created_at=at,
    )


def add_drive(engine: Engine, uuid: str, size: int, tier: str = "disk", on: str = "") -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(drives).values(
                uuid=uuid, user=USER, size=size, cipher="none", tier=tier, created_at=0.0, host=on
            )
        )


def engine_with_user(tmp_path: Path) -> Engine:
    engine = open_engine(tmp_path / "state.sqlite")
    with engine.begin() as connection:
        connection.execute(insert(users).values(uuid=USER, key_hash="0" * 64, created_at=0))
    return engine


def test_a_host_registers_once_and_registering_again_renews_its_capacity(
    tmp_path: Path,
) -> None:
    engine = engine_with_user(tmp_path)
    with engine.begin() as connection:
        host_store.register_host(connection, host("hv-a", cores=4, at=1000.0))
        host_store.register_host(connection, host("hv-a", cores=8, at=2000.0))
        host_store.register_host(connection, host("hv-b"))
        listed = host_store.list_hosts(connection)
    assert [record.name for record in listed] == ["hv-a", "hv-b"]
    assert listed[0] == HostRecord(
        name="hv-a",
        state="online",
        cores=8,
        core_mhz=2500,
        memory_mb=7000,
        disk_bytes_by_tier={"disk": 5 << 40, "ssd": 1 << 40},
        heartbeat_at=2000.0,
        created_at=1000.0,  # first registration kept
    )


def test_a_heartbeat_moves_the_time_of_a_known_host_only(tmp_path: Path) -> None:
    engine = engine_with_user(tmp_path)
    with engine.begin() as connection:
        host_store.register_host(connection, host("hv-a"))
        assert host_store.heartbeat(connection, "hv-a", 1234.5)
        assert not host_store.heartbeat(connection, "hv-z", 1234.5)
        record = host_store.get_host(connection, "hv-a")
        assert host_store.get_host(connection, "hv-z") is None
    assert record is not None and record.heartbeat_at == 1234.5


def test_drive_bytes_are_summed_per_host_and_tier(tmp_path: Path) -> None:
    engine = engine_with_user(tmp_path)
    add_drive(engine, "d1", 10, on="hv-a")
    add_drive(engine, "d2", 5, on="hv-a")
    add_drive(engine, "d3", 7, tier="ssd", on="hv-a")
    add_drive(engine, "d4", 1 << 41, on="hv-b")
    with engine.connect() as connection:
        assert host_store.drive_bytes_by_host(connection) == {
            ("hv-a", "disk"): 15,
            ("hv-a", "ssd"): 7,
            ("hv-b", "disk"): 1 << 41,
        }
        assert host_store.hosts_of_drives(connection, ["d1", "d4", "nosuch"]) == {
            "d1": "hv-a",
            "d4": "hv-b",
        }
        assert host_store.hosts_of_drives(connection, []) == {}


def test_drives_from_before_hosts_become_the_first_registering_hosts(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        upgrade_with_user(connection, "0011_web_sessions", USER)
        connection.execute(
            sa.text(
                "INSERT INTO drives (uuid, user, size, cipher, created_at)"
                " VALUES ('old', :u, 100, 'none', 0)"
            ),
            {"u": USER},
        )
    engine.dispose()
    engine = open_engine(path)  # migrates to the newest schema
    with engine.begin() as connection:
        assert connection.execute(select(drives.c.host)).scalar_one() == ""
        host_store.register_host(connection, host("hv-a", at=time.time()))
        host_store.register_host(connection, host("hv-b", at=time.time()))
        assert connection.execute(select(drives.c.host)).scalar_one() == "hv-a"
