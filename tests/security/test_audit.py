"""The audit trail: every state-changing command is recorded with who, what, when and the
result; reads are not; bodies (passwords) never are."""

import subprocess

from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from tests.api.drive_helpers import create_drive
from tests.test_daemon import ADMIN


async def test_changes_are_recorded_with_their_results(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
    await client.post(f"/drives/{drive}/set", data="size lots", headers=auth)  # 400
    await client.post(f"/drives/{drive}/write", data=b"x" * 10, headers=auth)
    await client.get(f"/drives/{drive}/info", headers=auth)  # a read: not recorded
    await client.get(f"/drives/{drive}/destroy", headers=auth)  # 405: refused before running
    await client.post(f"/drives/{drive}/destroy", headers=auth)
    history = platform.audit.history(object_id=drive)
    assert [(row.path.rsplit("/", 1)[-1], row.status, row.error) for row in history] == [
        ("create", 200, ""),
        ("set", 200, ""),
        ("set", 400, "usage"),
        ("write", 204, ""),
        ("destroy", 204, ""),
    ]
    assert {row.user for row in history} == {user.uuid}
    assert all(row.remote == "127.0.0.1" for row in history)
    assert history[0].at <= history[-1].at


async def test_secrets_in_bodies_are_never_recorded(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    body = "name s\ncpu 1000\nmem 128\nvnc:password Secr3t!!"
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 200
    rows = platform.audit.history()
    assert len(rows) == 1 and all("Secr3t" not in str(value) for value in rows[0].to_row().values())


async def test_the_admin_tool_shows_an_objects_history(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    await client.post(f"/drives/{drive}/set", data="name x", headers=auth)
    shown = subprocess.run(
        [ADMIN, "--state-dir", platform.config.state_dir, "audit", "--object", drive],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    blocks = shown.strip().split("\n\n")
    assert len(blocks) == 2
    assert f"command /drives/{drive}/set" in blocks[1] and "status 200" in blocks[1]
