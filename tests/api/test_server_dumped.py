"""A `dumped` server (its state saved by `openhosting-admin host suspend`) as the API sees it,
without a VM: its status, the drives it keeps claimed, what `set` may change, `stop` and
`destroy` dropping its dump; the operator listener's host commands answer loopback only.
Saving and restoring a real guest is tested in tests/integration/test_host_suspend.py."""

import asyncio
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from openhosting.api.ops import build_ops_app, host_suspend
from openhosting.services.platform import Platform
from openhosting.store import servers as server_store
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive


async def dumped_server(
    client: TestClient, auth: dict[str, str], platform: Platform, persistent: str
) -> tuple[str, str]:
    """A server with a drive, made `dumped` as `host suspend` leaves one: its drive claimed
    and its dump file in place. Returns the server and the drive."""
    drive = (await create_drive(client, auth, 1 << 20, "none"))["drive"]
    body = f"name d\ncpu 1000\nmem 256\npersistent {persistent}\nide:0:0 {drive}"
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    server = parse_properties(await response.text())["server"]
    user = parse_properties(await response.text())["user"]
    with platform.engine.begin() as connection:
        server_store.add_guest_claims(connection, user, server, [(drive, "ide:0:0", True)])
        server_store.update_server(connection, server, status="dumped")
    dumps = platform.servers.lifecycle.dumps
    dumps.directory.mkdir(parents=True, exist_ok=True)
    dumps.path(server).write_bytes(b"saved state")
    return server, drive


async def info(client: TestClient, auth: dict[str, str], path: str) -> dict[str, str]:
    response = await client.get(path, headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


async def test_a_dumped_server_shows_dumped_and_keeps_its_drives_claimed(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    server, drive = await dumped_server(client, auth, platform, "true")
    assert (await info(client, auth, f"/servers/{server}/info"))["status"] == "dumped"
    claimed = (await info(client, auth, f"/drives/{drive}/info"))["claimed"]
    assert claimed.endswith(f":guest:{server}:ide:0:0")
    # Its saved memory knows its devices: they cannot change, the name can.
    response = await client.post(f"/servers/{server}/set", data="mem 512", headers=auth)
    assert response.status == 409 and response.headers["X-Elastic-Error"] == "busy"
    response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
    assert response.status == 200
    assert parse_properties(await response.text())["status"] == "dumped"
    # Another server cannot take its drive meanwhile.
    body = f"name other\ncpu 1000\nmem 256\nide:0:0 {drive}"
    response = await client.post("/servers/create", data=body, headers=auth)
    assert response.status == 409, await response.text()


@pytest.mark.parametrize("persistent", ["true", "false"])
async def test_stopping_a_dumped_server_drops_its_dump_and_applies_the_stop_rules(
    client: TestClient, auth: dict[str, str], platform: Platform, persistent: str
) -> None:
    server, drive = await dumped_server(client, auth, platform, persistent)
    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204
    assert not platform.servers.lifecycle.dumps.path(server).exists()
    assert "claimed" not in await info(client, auth, f"/drives/{drive}/info")
    response = await client.get(f"/servers/{server}/info", headers=auth)
    if persistent == "true":
        assert parse_properties(await response.text())["status"] == "stopped"
    else:
        assert response.status == 404


async def test_destroying_a_dumped_server_removes_its_dump_and_releases_its_drives(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    server, drive = await dumped_server(client, auth, platform, "true")
    response = await client.post(f"/servers/{server}/destroy", headers=auth)
    assert response.status == 204
    assert not platform.servers.lifecycle.dumps.path(server).exists()
    assert "claimed" not in await info(client, auth, f"/drives/{drive}/info")


async def test_a_dump_that_cannot_be_read_back_leaves_the_server_dumped(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    server, drive = await dumped_server(client, auth, platform, "true")
    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert response.status == 500, await response.text()
    assert response.headers["X-Elastic-Error"] == "failed"
    assert (await info(client, auth, f"/servers/{server}/info"))["status"] == "dumped"
    assert platform.servers.lifecycle.dumps.path(server).exists()
    claimed = (await info(client, auth, f"/drives/{drive}/info"))["claimed"]
    assert claimed.endswith(f":guest:{server}:ide:0:0")


async def test_host_commands_on_the_operator_listener(
    client: TestClient,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    ops = await aiohttp_client(TestServer(build_ops_app(client.server.app)))
    for action in ("suspend", "resume"):
        response = await ops.post(f"/host/{action}")
        assert response.status == 200 and await response.text() == ""  # nothing to do
    assert (await ops.get("/host/suspend")).status == 405


async def test_host_commands_refuse_callers_from_elsewhere(client: TestClient) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("203.0.113.7", 40000) if name == "peername" else default
    )
    request = make_mocked_request(
        "POST", "/host/suspend", app=build_ops_app(client.server.app), transport=transport
    )
    with pytest.raises(web.HTTPForbidden):
        await asyncio.wait_for(host_suspend(request), 5)
