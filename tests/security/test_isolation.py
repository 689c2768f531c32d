"""Tenant isolation: every command of the API, run by a stranger against one user's drives,
servers, resources and images, answers 404 `missing` (or shows nothing of theirs), reveals
no data, and changes nothing."""

import asyncio
import contextlib

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from openhosting.api.routes import DRIVE, ROUTES, SERVER, SIZE, SOURCE, Kind
from openhosting.services.accounts.accounts import NewKey
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive
from tests.conftest import basic_auth

SECRET_BYTES = b"victim's private bytes"
# A plausible body for each command that takes one.
BODIES = {
    "drives.set": b"name stolen\nsize 1",
    "drives.write": SECRET_BYTES[::-1],
    "servers.set": b"name stolen\ncpu 100",
    "resources.set": b"name stolen",
}


async def read_for(response: ClientResponse, seconds: float) -> bytes:
    """What a never-ending response sends within `seconds`."""
    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for chunk in response.content.iter_any():
                received += chunk
    return received


async def snapshot(client: TestClient, auth: dict[str, str], paths: list[str]) -> list[str]:
    return [await (await client.get(path, headers=auth)).text() for path in paths]


async def test_a_stranger_can_neither_see_nor_touch_anything_of_another_user(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    drive = (await create_drive(client, auth, 4096, cipher="none"))["drive"]
    await client.post(f"/drives/{drive}/write", data=SECRET_BYTES, headers=auth)
    server_body = f"name victim\ncpu 500\nmem 64\nide:0:0 {drive}\npersistent true"
    server = parse_properties(
        await (await client.post("/servers/create/stopped", data=server_body, headers=auth)).text()
    )["server"]
    ip = parse_properties(
        await (await client.post("/resources/ip/create", data="name v", headers=auth)).text()
    )["resource"]
    vlan = parse_properties(
        await (await client.post("/resources/vlan/create", data="name v", headers=auth)).text()
    )["resource"]
    own_paths = [
        f"/drives/{drive}/info", f"/servers/{server}/info",
        f"/resources/ip/{ip}/info", f"/resources/vlan/{vlan}/info",
    ]  # fmt: skip
    before = await snapshot(client, auth, own_paths)

    stranger = basic_auth(other_user)
    stranger_drive = (await create_drive(client, stranger, 4096, cipher="none"))["drive"]
    victims = {DRIVE: drive, SERVER: server, SOURCE: drive}
    tried = 0
    for route in ROUTES:
        path = route.path
        for placeholder, value in victims.items():
            path = path.replace(placeholder, value)
        path = path.replace(f"{{offset:{SIZE}}}", "0").replace(f"{{size:{SIZE}}}", "10")
        path = path.replace("{offset}", "0").replace("{size}", "10")  # /hash: any segment
        path = path.replace("{conversion}", "gzip")
        path = path.replace("{path:.+}", "core/rfb.js").replace("{asset}", "console.js")
        for kind, resource in (("ip", ip), ("vlan", vlan)):
            attempt = path.replace("{type}", kind).replace("{resource}", resource)
            if "{" in attempt:
                raise AssertionError(f"a route the matrix cannot fill in: {route.path}")
            if attempt.endswith("/image/" + drive + "/gzip") or "/image/" in attempt:
                # The stranger images *from* the victim's drive into their own.
                attempt = attempt.replace(
                    f"/drives/{drive}/image", f"/drives/{stranger_drive}/image"
                )
            if route.command == "events.stream":
                # A stream that does not end: the backlog from the start (`after=0`) and what
                # comes while the victim changes things must be the stranger's own only.
                attempt += "?after=0"
            response = await client.post(
                attempt, data=BODIES.get(route.command, b""), headers=stranger
            )
            tried += 1
            if route.command == "events.stream":
                # The victim's own command (it sets the name the drive has: an event, and
                # no change for the snapshot to see).
                await client.post(f"/drives/{drive}/set", data="name test", headers=auth)
                body = await read_for(response, 1.0)
                assert stranger_drive.encode() in body  # the stranger's own event is there
                response.close()
            else:
                body = await response.read()
            # An error may repeat the id the stranger sent; it must show nothing else.
            for secret in (SECRET_BYTES, drive.encode(), server.encode(), ip.encode(),
                           vlan.encode()):  # fmt: skip
                if secret.decode(errors="replace") in attempt:
                    continue
                if secret == ip.encode() and route.command == "resources.create":
                    continue  # a fresh address from the shared pool, not the victim's
                assert secret not in body, (attempt, body[:200])
            has_victim_id = any(v in attempt for v in (drive, server, ip, vlan))
            if has_victim_id:
                assert response.status == 404, (attempt, response.status, body[:200])
                assert response.headers["X-Elastic-Error"] == "missing"
            elif not route.basic_auth:
                # The console's WebSocket and page: opened by a token, never by a key.
                assert response.status in (401, 404, 405), attempt
            elif route.kind is Kind.READ:
                assert response.status in (200, 404), attempt
            if "{type}" not in route.path:
                break  # one pass is enough for routes without a resource type
    assert tried >= len(ROUTES)
    assert await snapshot(client, auth, own_paths) == before  # nothing changed
    read = await client.get(f"/drives/{drive}/read/0/{len(SECRET_BYTES)}", headers=auth)
    assert await read.read() == SECRET_BYTES
