"""The platform's figures count the CPU and memory of the servers whose VM lives, from their
stored configurations."""

from pathlib import Path

from openhosting.model.server import ServerConfig
from openhosting.services.platform_state import read_platform_state
from openhosting.store import servers as server_store
from openhosting.store import users as user_store
from openhosting.store.database import open_engine
from openhosting.store.records import ServerRecord

USER = "11111111-1111-4111-8111-111111111111"


def _server(uuid: str, cpu: int, mem: int, status: str) -> ServerRecord:
    config = ServerConfig.from_properties({"name": uuid[:4], "cpu": str(cpu), "mem": str(mem)})
    return ServerRecord(uuid, USER, config, created_at=0.0, status=status)


def test_capacity_used_is_the_cpu_and_memory_of_live_servers_only(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "state.db")
    live = _server("22222222-2222-4222-8222-222222222222", 1500, 300, "active")
    paused = _server("33333333-3333-4333-8333-333333333333", 500, 100, "active")
    ended = _server("44444444-4444-4444-8444-444444444444", 64000, 262144, "active")
    dead = _server("55555555-5555-4555-8555-555555555555", 7000, 700, "dead")
    try:
        with engine.begin() as connection:
            user_store.insert_user(connection, uuid=USER, key_hash="0" * 64, created_at=0)
            for server in (live, paused, ended, dead):
                server_store.insert_server(connection, **server.to_row())
        state = read_platform_state(
            engine, {live.uuid: "active", paused.uuid: "paused"}, {}, core_mhz=2000
        )
    finally:
        engine.dispose()
    assert (state.capacity_used["cpu_mhz"], state.capacity_used["mem_mb"]) == (2000, 400)
    # A VM that just ended is stopped whatever the row still says; a dead one stays dead.
    assert state.servers_by_status == {
        "active": 1, "paused": 1, "stopped": 1, "dumped": 0, "dead": 1,
    }  # fmt: skip
