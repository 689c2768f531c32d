"""`servers/info` reads the NICs of all the caller's running servers in one query, not one per
server (docs/cluster.md's capacity figures: 32 statements for 30 servers before); what it
answers is what each `servers/S/info` answers. VMs on the fake hypervisor, real SQLite."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event

from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.conftest import basic_auth, config_in

SERVERS = 4


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_in(tmp_path, hypervisor={"driver": "fake"})


@pytest.fixture
def statements(platform: Platform) -> Iterator[list[str]]:
    """Every SQL statement run while the test runs, through the engine or the Reader."""
    ran: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        ran.append(statement)

    event.listen(platform.engine, "before_cursor_execute", record)
    platform.reader._driver().set_trace_callback(ran.append)
    try:
        yield ran
    finally:
        platform.reader._driver().set_trace_callback(None)
        event.remove(platform.engine, "before_cursor_execute", record)


async def _running_server(client: TestClient, auth: dict[str, str], index: int) -> str:
    body = f"name s{index}\ncpu 500\nmem 64\nnic:0:model virtio\nnic:0:dhcp auto"
    response = await client.post("/servers/create", data=body, headers=auth)
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    assert info["status"] == "active", info
    return info["server"]


async def test_server_list_info_reads_every_running_servers_nics_in_one_query(
    client: TestClient, auth: dict[str, str], statements: list[str], other_user: NewKey
) -> None:
    servers = [await _running_server(client, auth, index) for index in range(SERVERS)]
    other = await _running_server(client, basic_auth(other_user), SERVERS)
    singles = []
    for server in servers:
        response = await client.get(f"/servers/{server}/info", headers=auth)
        singles.append(parse_properties(await response.text()))
    statements.clear()
    response = await client.get("/servers/info", headers=auth)
    assert response.status == 200, await response.text()
    listed = parse_properties_list(await response.text())
    nic_reads = [statement for statement in statements if "server_nics" in statement]
    assert len(nic_reads) == 1, nic_reads  # two per server (8) on the code before
    # The same answers as one server's info each: addresses, counters, status; only the
    # caller's servers.
    assert [item["server"] for item in listed] == servers
    assert other not in {item["server"] for item in listed}
    assert all(item["nic:0:dhcp:ip"] for item in listed)
    assert listed == singles
