"""A drive's `status` (docs/api.md §4): `active` while its data can be reached, `inactive`
while it cannot (its file gone, replaced, or its storage failing); a server does not start
on an inactive drive. Real drive files, real SQLite."""

import os
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive, drive_info


async def all_statuses(client: TestClient, auth: dict[str, str]) -> dict[str, str]:
    response = await client.get("/drives/info", headers=auth)
    assert response.status == 200, await response.text()
    blocks = (await response.text()).strip().split("\n\n")
    return {info["drive"]: info["status"] for info in map(parse_properties, blocks)}


async def test_a_drive_whose_data_cannot_be_reached_is_inactive_until_it_can(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, 1 << 20, "none"))["drive"]
    other = (await create_drive(client, auth, 1 << 20, "aes-xts-plain"))["drive"]
    assert (await drive_info(client, auth, drive))["status"] == "active"
    path = platform.drives.files.path_of(drive)
    moved = path.with_suffix(".away")

    os.rename(path, moved)  # as when its storage is not mounted
    assert (await drive_info(client, auth, drive))["status"] == "inactive"
    assert await all_statuses(client, auth) == {drive: "inactive", other: "active"}

    path.mkdir()  # something that is not a drive file in its place
    assert (await drive_info(client, auth, drive))["status"] == "inactive"
    path.rmdir()

    os.rename(moved, path)
    assert (await drive_info(client, auth, drive))["status"] == "active"


async def test_a_server_on_an_inactive_drive_does_not_start_409_busy(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, 1 << 20, "none"))["drive"]
    response = await client.post(
        "/servers/create/stopped",
        data=f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\n",
        headers=auth,
    )
    assert response.status == 200, await response.text()
    server = parse_properties(await response.text())["server"]
    path: Path = platform.drives.files.path_of(drive)
    path.unlink()

    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert response.status == 409, await response.text()
    assert response.headers["X-Elastic-Error"] == "busy"
    assert "inactive" in await response.text()
    assert "claimed" not in await drive_info(client, auth, drive)
    info = await client.get(f"/servers/{server}/info", headers=auth)
    assert parse_properties(await info.text())["status"] == "stopped"
