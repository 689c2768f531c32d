"""VLANs' VNIs and the hosts' underlay addresses in the database (store/vnis.py, migration
0016), on both engines: a VNI is its VLAN's hash when free, the next free value else, unique,
kept for the VLAN's life; two API nodes creating VLANs at once on PostgreSQL never take one
VNI twice; the VXLAN peers of a host are the other online hosts' addresses."""

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, insert, select
from sqlalchemy.exc import IntegrityError

from openhosting.network.vxlan import vni_of
from openhosting.store import hosts as host_store
from openhosting.store import vnis as vni_store
from openhosting.store.database import MIGRATIONS, open_engine
from openhosting.store.records import HostRecord
from openhosting.store.tables import resources, users

USER = "11111111-1111-4111-8111-111111111111"
# Two VLANs whose UUIDs hash to one VNI (13683501), found by trying UUIDs.
CLASH_A = "a0cb9e54-05e6-577d-92f8-7908c5d28a31"
CLASH_B = "e0d24a38-2938-50e9-827c-a32273bfb513"
TOP = vni_store.VNI_COUNT - 1


def add_user(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(insert(users).values(uuid=USER, key_hash="0" * 64, created_at=0))


def add_vlan(connection: Connection, vlan: str, preferred: int | None = None) -> int:
    vni = vni_store.allocate_vni(connection, vni_of(vlan) if preferred is None else preferred)
    connection.execute(
        insert(resources).values(type="vlan", resource=vlan, user=USER, created_at=0, vni=vni)
    )
    return vni


def test_a_vlan_takes_its_hash_and_a_clash_the_next_free_vni(engine: Engine) -> None:
    add_user(engine)
    assert vni_of(CLASH_A) == vni_of(CLASH_B) == 13683501
    with engine.begin() as connection:
        first = add_vlan(connection, CLASH_A)
        second = add_vlan(connection, CLASH_B)
        # Another VLAN preferring the value the clash took goes one further again.
        third = add_vlan(connection, "0d6f4a2e-0000-4000-8000-000000000003", 13683502)
        ip_row = {"type": "ip", "resource": "192.0.2.9", "user": USER, "created_at": 0}
        connection.execute(insert(resources).values(**ip_row))  # an IP has none (NULL)
    assert (first, second, third) == (13683501, 13683502, 13683503)
    with engine.connect() as connection:
        assert vni_store.vnis_of(connection, [CLASH_A, CLASH_B, "192.0.2.9", "nope"]) == {
            CLASH_A: 13683501,
            CLASH_B: 13683502,
        }
        assert vni_store.vnis_of(connection, []) == {}


def test_the_vnis_wrap_past_the_top_and_are_unique(engine: Engine) -> None:
    add_user(engine)
    with engine.begin() as connection:
        assert add_vlan(connection, "0d6f4a2e-0000-4000-8000-000000000001", TOP) == TOP
        assert add_vlan(connection, "0d6f4a2e-0000-4000-8000-000000000002", 1) == 1
        assert add_vlan(connection, "0d6f4a2e-0000-4000-8000-000000000003", TOP) == 2
    with pytest.raises(ValueError, match="not in 1"), engine.begin() as connection:
        vni_store.allocate_vni(connection, 0)
    # The column itself refuses a second holder.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            insert(resources).values(
                type="vlan", resource="other", user=USER, created_at=0, vni=TOP
            )
        )


def test_a_vni_is_free_again_once_its_vlan_is_gone(engine: Engine) -> None:
    add_user(engine)
    with engine.begin() as connection:
        add_vlan(connection, CLASH_A)
        connection.execute(sa.delete(resources).where(resources.c.resource == CLASH_A))
        assert add_vlan(connection, CLASH_B) == 13683501


def test_two_nodes_creating_vlans_at_once_take_two_vnis(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    try:
        add_user(engine)
        taken: list[int] = []
        with engine.begin() as first:
            taken.append(add_vlan(first, CLASH_A))

            def other_node() -> None:
                with engine.begin() as second:
                    taken.append(add_vlan(second, CLASH_B))

            thread = threading.Thread(target=other_node)
            thread.start()
            thread.join(1.0)
            assert thread.is_alive()  # waits on the VNI space until the first commits
        thread.join(10.0)
        assert not thread.is_alive()
        assert taken == [13683501, 13683502]
    finally:
        engine.dispose()


def host(name: str, at: float, vxlan_local: str = "") -> HostRecord:
    return HostRecord(
        name=name,
        state="online",
        cores=4,
        core_mhz=2500,
        memory_mb=7000,
        disk_bytes_by_tier={},
        heartbeat_at=at,
        created_at=at,
        vxlan_local=vxlan_local,
    )


def test_the_peers_are_the_other_online_hosts_underlay_addresses(engine: Engine) -> None:
    now = time.time()
    with engine.begin() as connection:
        host_store.register_host(connection, host("hv-a", now, "198.18.0.1"))
        host_store.register_host(connection, host("hv-b", now))
        host_store.register_host(connection, host("hv-c", now))
        host_store.register_host(connection, host("hv-gone", now - 100, "198.18.0.9"))
        assert vni_store.set_vxlan_local(connection, "hv-b", "198.18.0.2")
        assert vni_store.set_vxlan_local(connection, "hv-c", "198.18.0.3")
        assert not vni_store.set_vxlan_local(connection, "hv-nowhere", "198.18.0.4")
        # A daemon registering its host again without an address keeps the operator's.
        host_store.register_host(connection, host("hv-b", now))
    with engine.connect() as connection:
        assert vni_store.vxlan_peers(connection, "hv-a", now - 20) == ["198.18.0.2", "198.18.0.3"]
        assert vni_store.vxlan_peers(connection, "hv-b", now - 20) == ["198.18.0.1", "198.18.0.3"]
        assert host_store.get_host(connection, "hv-b").vxlan_local == "198.18.0.2"  # type: ignore[union-attr]


def test_the_migration_gives_existing_vlans_their_hash_or_the_next_free_vni(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0015_host_agents")
        connection.execute(
            sa.text("INSERT INTO users (uuid, key_hash, created_at) VALUES (:u, :h, 0)"),
            {"u": USER, "h": "0" * 64},
        )
        for kind, name in (("vlan", CLASH_B), ("vlan", CLASH_A), ("ip", "192.0.2.9")):
            connection.execute(
                sa.text(
                    "INSERT INTO resources (type, resource, user, created_at)"
                    " VALUES (:t, :r, :u, 0)"
                ),
                {"t": kind, "r": name, "u": USER},
            )
    engine.dispose()
    engine = open_engine(path)  # migrates to the newest schema
    with engine.connect() as connection:
        rows = connection.execute(select(resources.c.resource, resources.c.vni)).all()
    engine.dispose()
    # In UUID order: A keeps the VNI every host gave it, B (unusable beside A) the next one.
    assert dict(rows) == {CLASH_A: 13683501, CLASH_B: 13683502, "192.0.2.9": None}
