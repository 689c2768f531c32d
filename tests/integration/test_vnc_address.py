"""Where a running server's VNC listens is in its info (`vnc:ip`, `vnc`, `vnc:port`) even when
its configuration never said `vnc:ip`: a password alone gives it a VNC server. Real QEMU
(TCG); the server has no drives, so nothing boots."""

import asyncio

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from tests.integration.server_helpers import create_server, server_info

TIMEOUT = 10


async def rfb_banner(address: str, port: int) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), TIMEOUT)
    try:
        return await asyncio.wait_for(reader.readexactly(12), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_password_without_vnc_ip_shows_where_vnc_listens(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    created = await create_server(client, auth, "name v\ncpu 500\nmem 64\nvnc:password abc12345")
    info = await server_info(client, auth, created["server"])
    for answer in (created, info):
        assert answer["status"] == "active"
        assert answer["vnc:ip"] == answer["vnc"] == platform.config.hypervisor.vnc_listen
    port = int(info.get("vnc:port", 5900))
    assert (await rfb_banner(info["vnc:ip"], port)).startswith(b"RFB 003.")

    stopped = await client.post(f"/servers/{created['server']}/stop", headers=auth)
    assert stopped.status == 204


async def test_a_server_without_a_password_shows_no_vnc(
    client: TestClient, auth: dict[str, str], servers_cleanup: None
) -> None:
    created = await create_server(client, auth, "name n\ncpu 500\nmem 64\npersistent true")
    assert created["status"] == "active"
    assert "vnc:ip" not in created and "vnc" not in created
    stopped = await client.post(f"/servers/{created['server']}/stop", headers=auth)
    assert stopped.status == 204
