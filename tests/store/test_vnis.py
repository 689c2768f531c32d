"""VLANs' VNIs and the hosts' underlay addresses in the database (store/vnis.py, migration
0016), on both engines: a VNI is its VLAN's hash when free, the next free value else, unique,
kept for the VLAN's life; two API nodes creating VLANs at once on PostgreSQL never take one
VNI twice; the VXLAN peers of a host are the other online hosts' addresses, and each of its
VLANs floods only to the online hosts that run one of that VLAN's servers."""

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, create_engine, insert, select
from sqlalchemy.exc import IntegrityError

from openhosting.network.vxlan import vni_of
from openhosting.store import hosts as host_store
from openhosting.store import resources as resource_store
from openhosting.store import servers as server_store
from openhosting.store import vnis as vni_store
from openhosting.store.database import open_engine
from openhosting.store.records import HostRecord
from openhosting.store.tables import resources, users
from tests.store.old_schema import upgrade_with_user

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


VLAN_X = "0e1f0000-0000-4000-8000-00000000000a"
VLAN_Y = "0e1f0000-0000-4000-8000-00000000000b"
VLAN_Z = "0e1f0000-0000-4000-8000-00000000000c"


def add_server(connection: Connection, number: int, host_name: str, *vlans: str) -> str:
    """A server on `host_name` holding a public NIC and one NIC on each of `vlans`."""
    uuid = f"5e000000-0000-4000-8000-{number:012d}"
    server_store.insert_server(
        connection, uuid=uuid, user=USER, config="{}", status="active", created_at=0,
        host=host_name,
    )  # fmt: skip
    for index, network in enumerate(("public", *vlans)):
        resource_store.insert_nic(
            connection, server=uuid, nic=index, user=USER, network=network,
            mac=f"52:54:00:00:{number:02x}:{index:02x}", address=None, temporary=False,
        )  # fmt: skip
    return uuid


def test_each_vlan_floods_only_to_the_online_hosts_running_one_of_its_servers(
    engine: Engine,
) -> None:
    now = time.time()
    add_user(engine)
    with engine.begin() as connection:
        for name, address in (("hv-a", "198.18.0.1"), ("hv-b", "198.18.0.2"), ("hv-c", "")):
            host_store.register_host(connection, host(name, now, address))
        host_store.register_host(connection, host("hv-d", now, "198.18.0.4"))
        host_store.register_host(connection, host("hv-gone", now - 100, "198.18.0.9"))
        add_server(connection, 1, "", VLAN_X, VLAN_Y)  # "": the API node's own host, hv-a
        add_server(connection, 2, "hv-b", VLAN_X)
        add_server(connection, 3, "hv-b", VLAN_X)  # one entry per host, not per server
        add_server(connection, 4, "hv-c", VLAN_X)  # no underlay address: no peer
        add_server(connection, 5, "hv-gone", VLAN_Y)  # offline: no peer
        add_server(connection, 6, "hv-d", VLAN_Z)  # hv-d runs none of hv-a's VLANs
        starting = add_server(connection, 7, "hv-b", VLAN_Z)  # its row still names hv-b
    since = now - 20
    with engine.connect() as connection:
        lists = vni_store.flood_lists(connection, "hv-a", "hv-a", since)
        # Every VLAN of the host is named, one with no other host's server too.
        assert lists == {VLAN_X: ["198.18.0.2"], VLAN_Y: []}
        assert vni_store.flood_lists(connection, "hv-b", "hv-a", since) == {
            VLAN_X: ["198.18.0.1"],
            VLAN_Z: ["198.18.0.4"],
        }
        assert vni_store.flood_lists(connection, "hv-d", "hv-a", since) == {VLAN_Z: ["198.18.0.2"]}
        # A server whose NICs hv-a is making now (its row still names the host it ran on
        # before): its VLAN is hv-a's too, flooding to the hosts running its other servers.
        assert vni_store.flood_lists(connection, "hv-a", "hv-a", since, {starting}) == {
            VLAN_X: ["198.18.0.2"],
            VLAN_Y: [],
            VLAN_Z: ["198.18.0.4"],
        }
        assert vni_store.flood_lists(connection, "hv-gone", "hv-a", since) == {
            VLAN_Y: ["198.18.0.1"]
        }
        assert vni_store.any_peer(connection, "hv-a", since)
    with engine.begin() as connection:
        resource_store.delete_nics(connection, "5e000000-0000-4000-8000-000000000002")
        resource_store.delete_nics(connection, "5e000000-0000-4000-8000-000000000003")
    with engine.connect() as connection:
        # hv-b's servers of VLAN X stopped: hv-a no longer floods X's frames to it.
        assert vni_store.flood_lists(connection, "hv-a", "hv-a", since) == {
            VLAN_X: [],
            VLAN_Y: [],
        }
        assert not vni_store.any_peer(connection, "hv-a", now + 1)


def test_each_vlans_guests_on_other_online_hosts_are_sent_to_their_host(engine: Engine) -> None:
    """The MACs behind each VLAN of a host: those of its NICs held by servers on the other
    online hosts with an underlay address, each with that host's address; in one query."""
    now = time.time()
    add_user(engine)
    with engine.begin() as connection:
        for name, address in (("hv-a", "198.18.0.1"), ("hv-b", "198.18.0.2"), ("hv-c", "")):
            host_store.register_host(connection, host(name, now, address))
        host_store.register_host(connection, host("hv-gone", now - 100, "198.18.0.9"))
        add_server(connection, 1, "", VLAN_X, VLAN_Y)  # "": the API node's own host, hv-a
        add_server(connection, 2, "hv-b", VLAN_X, VLAN_Z)
        add_server(connection, 3, "hv-b", VLAN_X)
        add_server(connection, 4, "hv-c", VLAN_X)  # no underlay address: not reached
        add_server(connection, 5, "hv-gone", VLAN_Y)  # offline: not reached
        moving = add_server(connection, 6, "hv-b", VLAN_Y)  # on its way to hv-a
    since = now - 20
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as connection:
            macs = vni_store.remote_macs(connection, "hv-a", "hv-a", since)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    # NIC 1 of server 2 is on VLAN X, its NIC 2 on Z (none of hv-a's VLANs).
    assert macs == {
        VLAN_X: {"52:54:00:00:02:01": "198.18.0.2", "52:54:00:00:03:01": "198.18.0.2"},
        VLAN_Y: {"52:54:00:00:06:01": "198.18.0.2"},
    }
    with engine.connect() as connection:
        # Its NICs being made on hv-a: here, whatever its row says yet.
        assert vni_store.remote_macs(connection, "hv-a", "hv-a", since, {moving})[VLAN_Y] == {}
        # From hv-b: hv-a's guests (the API node's own host's row says "").
        assert vni_store.remote_macs(connection, "hv-b", "hv-a", since) == {
            VLAN_X: {"52:54:00:00:01:01": "198.18.0.1"},
            VLAN_Y: {"52:54:00:00:01:02": "198.18.0.1"},
            VLAN_Z: {},
        }


def test_the_flood_lists_of_a_host_are_one_query(engine: Engine) -> None:
    now = time.time()
    add_user(engine)
    with engine.begin() as connection:
        for number, name in enumerate(("hv-a", "hv-b", "hv-c"), start=1):
            host_store.register_host(connection, host(name, now, f"198.18.0.{number}"))
        vlans = [f"0e1f0000-0000-4000-8000-{n:012d}" for n in range(20)]
        add_server(connection, 1, "hv-a", *vlans[:10])
        add_server(connection, 2, "hv-a", *vlans[10:])
        add_server(connection, 3, "hv-b", *vlans[::2])
        add_server(connection, 4, "hv-c", *vlans[::3])
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as connection:
            lists = vni_store.flood_lists(connection, "hv-a", "hv-a", now - 20)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert len(lists) == 20
    assert lists[vlans[0]] == ["198.18.0.2", "198.18.0.3"]
    assert lists[vlans[1]] == []
    assert lists[vlans[2]] == ["198.18.0.2"]
    assert lists[vlans[3]] == ["198.18.0.3"]


def test_the_migration_gives_existing_vlans_their_hash_or_the_next_free_vni(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        upgrade_with_user(connection, "0015_host_agents", USER)
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
