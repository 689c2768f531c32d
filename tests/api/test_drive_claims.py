"""The busy rules of claimed drives (docs/api.md §4, §5): a drive held by a server's device refuses
writes unless it is `claim:type shared`, and refuses destroy and resize whatever its type."""

import gzip
import uuid as uuid_module

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, insert

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store.tables import claims
from tests.api.drive_helpers import create_drive, drive_info, read_bytes

SIZE = 1024 * 1024


def claim(platform: Platform, drive: str, user: str, kind: str = "guest") -> str:
    """Record that a server (a made-up one: only the row matters here) holds `drive`."""
    holder = str(uuid_module.uuid4())
    with platform.engine.begin() as connection:
        connection.execute(
            insert(claims).values(
                drive=drive, user=user, kind=kind, holder=holder, device="ide:0:0",
                exclusive=True,
            )
        )  # fmt: skip
    return holder


def release(platform: Platform, drive: str) -> None:
    with platform.engine.begin() as connection:
        connection.execute(delete(claims).where(claims.c.drive == drive))


async def assert_busy(response: ClientResponse) -> None:
    text = await response.text()
    assert response.status == 409, text
    assert response.headers["X-Elastic-Error"] == "busy"


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_an_exclusive_drive_held_by_a_guest_refuses_every_write(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey, cipher: str
) -> None:
    drive = (await create_drive(client, auth, SIZE, cipher))["drive"]
    claim(platform, drive, user.uuid)
    for path, body, headers in [
        (f"/drives/{drive}/write", b"x" * 4096, {}),
        (f"/drives/{drive}/write/4096", b"x" * 10, {}),
        (f"/drives/{drive}/write", gzip.compress(b"y" * 4096), {"Content-Encoding": "gzip"}),
    ]:
        response = await client.post(path, data=body, headers={**auth, **headers})
        await assert_busy(response)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == bytes(SIZE)
    info = await drive_info(client, auth, drive)
    assert info["write:requests"] == "0"


async def test_a_shared_drive_held_by_a_guest_takes_writes(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    drive = (await create_drive(client, auth, SIZE, claim_type="shared"))["drive"]
    holder = claim(platform, drive, user.uuid)
    info = await drive_info(client, auth, drive)
    assert info["claimed"] == f"{user.uuid}:guest:{holder}:ide:0:0"
    response = await client.post(f"/drives/{drive}/write/100", data=b"shared", headers=auth)
    assert response.status == 204, await response.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/98/10") == b"\0\0shared\0\0"


async def test_a_shared_drive_being_imaged_still_refuses_writes(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    drive = (await create_drive(client, auth, SIZE, claim_type="shared"))["drive"]
    claim(platform, drive, user.uuid, kind="imaging")
    response = await client.post(f"/drives/{drive}/write", data=b"x", headers=auth)
    await assert_busy(response)


@pytest.mark.parametrize("claim_type", ["exclusive", "shared"])
async def test_a_claimed_drive_refuses_destroy_and_resize_but_can_be_renamed(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey, claim_type: str
) -> None:
    drive = (await create_drive(client, auth, SIZE, claim_type=claim_type))["drive"]
    claim(platform, drive, user.uuid)
    response = await client.post(f"/drives/{drive}/destroy", headers=auth)
    await assert_busy(response)
    for size in (SIZE * 2, SIZE // 2):
        response = await client.post(f"/drives/{drive}/set", data=f"size {size}", headers=auth)
        await assert_busy(response)
    info = await drive_info(client, auth, drive)
    assert info["size"] == str(SIZE)
    assert platform.drives.files.path_of(drive).stat().st_size == SIZE

    response = await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    assert (await drive_info(client, auth, drive))["name"] == "renamed"


async def test_a_released_drive_can_be_written_resized_and_destroyed_again(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    drive = (await create_drive(client, auth, SIZE))["drive"]
    claim(platform, drive, user.uuid)
    release(platform, drive)
    assert "claimed" not in await drive_info(client, auth, drive)
    response = await client.post(f"/drives/{drive}/write", data=b"free", headers=auth)
    assert response.status == 204
    response = await client.post(f"/drives/{drive}/set", data=f"size {SIZE * 2}", headers=auth)
    assert response.status == 200
    response = await client.post(f"/drives/{drive}/destroy", headers=auth)
    assert response.status == 204
