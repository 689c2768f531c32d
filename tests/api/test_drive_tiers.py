"""Storage tiers (docs/api.md §4, docs/operating.md): each tier's drives live in the tier's
own directory; an unknown tier is 400 `usage` naming `tier`; a drive keeps its tier (imaging
copies it into another); the start-time repair scans every tier's directory."""

import os
import time
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.drives.drive_repair import ORPHAN_GRACE_SECONDS
from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.api.drive_helpers import create_drive, drive_info, read_bytes
from tests.api.imaging_helpers import image, wait_imaged, write
from tests.conftest import basic_auth, config_with_tiers

SIZE = 256 * 1024


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """`disk` in the state directory, `ssd` and `archive` each in a directory of its own."""
    return config_with_tiers(tmp_path, "ssd", "archive")


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.img"))


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_a_drive_lives_in_its_tiers_directory(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path, cipher: str
) -> None:
    disk = (await create_drive(client, auth, SIZE, cipher))["drive"]
    ssd = (await create_drive(client, auth, SIZE, cipher, tier="ssd"))["drive"]
    archive = (await create_drive(client, auth, SIZE, cipher, tier="archive"))["drive"]
    assert files_in(tmp_path / "state" / "drives") == [f"{disk}.img"]
    assert files_in(tmp_path / "ssd") == [f"{ssd}.img"]
    assert files_in(tmp_path / "archive") == [f"{archive}.img"]
    assert (await drive_info(client, auth, ssd))["tier"] == "ssd"
    assert (await drive_info(client, auth, disk))["tier"] == "disk"
    # Active: its file is found in its tier's directory, for one info and for all.
    assert (await drive_info(client, auth, archive))["status"] == "active"
    listed = parse_properties_list(await (await client.get("/drives/info", headers=auth)).text())
    assert [info["status"] for info in listed] == ["active"] * 3

    # Its bytes go to and come from its tier's file, gzip writes staged beside it.
    data = os.urandom(SIZE)
    await write(client, auth, ssd, 0, data)
    assert await read_bytes(client, auth, f"/drives/{ssd}/read") == data
    assert await read_bytes(client, auth, f"/drives/{disk}/read") == bytes(SIZE)
    response = await client.post(f"/drives/{ssd}/set", data="size 128K", headers=auth)
    assert response.status == 200, await response.text()
    assert await read_bytes(client, auth, f"/drives/{ssd}/read") == data[: 128 * 1024]

    response = await client.post(f"/drives/{ssd}/destroy", headers=auth)
    assert response.status == 204
    assert files_in(tmp_path / "ssd") == []
    assert files_in(tmp_path / "state" / "drives") == [f"{disk}.img"]


@pytest.mark.parametrize("tier", ["nvme", "", "ssd archive", "DISK"])
async def test_a_tier_the_platform_has_not_is_400_usage_naming_tier(
    client: TestClient, auth: dict[str, str], tmp_path: Path, tier: str
) -> None:
    response = await client.post(
        "/drives/create", data=f"name x\nsize 1M\ntier {tier}", headers=auth
    )
    assert response.status == 400, await response.text()
    assert response.headers["X-Elastic-Error"] == "usage"
    assert "tier" in await response.text()
    for directory in (tmp_path / "state" / "drives", tmp_path / "ssd", tmp_path / "archive"):
        assert files_in(directory) == []


async def test_a_drive_keeps_its_tier_and_another_users_is_not_found(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, SIZE, tier="ssd"))["drive"]
    response = await client.post(f"/drives/{drive}/set", data="tier archive", headers=auth)
    assert response.status == 400, await response.text()
    assert response.headers["X-Elastic-Error"] == "usage"
    assert "tier cannot be changed" in await response.text()
    # Sent back unchanged (as clients that set from info do): accepted.
    response = await client.post(f"/drives/{drive}/set", data="tier ssd\nname kept", headers=auth)
    assert response.status == 200, await response.text()
    assert parse_properties(await response.text())["tier"] == "ssd"

    stranger = basic_auth(platform.accounts.create_user("mallory"))
    for response in (
        await client.post(f"/drives/{drive}/set", data="tier ssd", headers=stranger),
        await client.get(f"/drives/{drive}/info", headers=stranger),
    ):
        assert response.status == 404, await response.text()
        assert response.headers["X-Elastic-Error"] == "missing"


@pytest.mark.parametrize(
    ("src_cipher", "dst_cipher"), [("none", "aes-xts-plain"), ("aes-xts-plain", "none")]
)
async def test_imaging_copies_a_drive_into_another_tier(
    client: TestClient, auth: dict[str, str], src_cipher: str, dst_cipher: str
) -> None:
    """How a drive changes tier: a new drive in the other tier, imaged from it."""
    src = (await create_drive(client, auth, SIZE, src_cipher))["drive"]
    data = os.urandom(64 * 1024)
    await write(client, auth, src, 100_000, data)
    dst = (await create_drive(client, auth, SIZE, dst_cipher, tier="ssd"))["drive"]
    await image(client, auth, dst, src)
    info = await wait_imaged(client, auth, dst)
    assert "imaging:error" not in info, info
    expected = bytes(100_000) + data + bytes(SIZE - 100_000 - len(data))
    assert await read_bytes(client, auth, f"/drives/{dst}/read") == expected
    again = (await create_drive(client, auth, SIZE, tier="archive"))["drive"]
    await image(client, auth, again, dst)
    await wait_imaged(client, auth, again)
    assert await read_bytes(client, auth, f"/drives/{again}/read") == expected


async def test_the_start_time_repair_scans_every_tiers_directory(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    ssd = (await create_drive(client, auth, SIZE, tier="ssd"))["drive"]
    archive = (await create_drive(client, auth, SIZE, "aes-xts-plain", tier="archive"))["drive"]
    data = os.urandom(SIZE)
    for drive in (ssd, archive):
        await write(client, auth, drive, 0, data)
    # A daemon killed mid-resize: the rows say what `set` answered, the files did not follow.
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, ssd, size=1000)
        drive_store.update_drive(connection, archive, size=2 * SIZE)
    # A daemon killed between a file and its row, and a staging file a gzip write left.
    long_ago = time.time() - ORPHAN_GRACE_SECONDS - 60
    orphan = tmp_path / "archive" / f"{uuid.uuid4()}.img"
    orphan.write_bytes(b"left behind")
    os.utime(orphan, (long_ago, long_ago))
    staging = tmp_path / "ssd" / f"{ssd}.img.staging"
    staging.write_bytes(b"half a write")

    assert platform.drives.repair_files() == (2, 1)
    assert not orphan.exists() and not staging.exists()
    assert await read_bytes(client, auth, f"/drives/{ssd}/read") == data[:1000]
    assert await read_bytes(client, auth, f"/drives/{archive}/read") == data + bytes(SIZE)
    assert platform.drives.repair_files() == (0, 0)


async def test_a_file_found_in_another_tiers_directory_is_never_removed(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    """An operator who gives `ssd` a directory of its own after drives were made in the
    shared one must move their files: until then the repair keeps them where they are."""
    drive = (await create_drive(client, auth, SIZE, tier="ssd"))["drive"]
    moved = tmp_path / "state" / "drives" / f"{drive}.img"
    (tmp_path / "ssd" / f"{drive}.img").rename(moved)
    long_ago = time.time() - ORPHAN_GRACE_SECONDS - 60
    os.utime(moved, (long_ago, long_ago))
    assert platform.drives.repair_files() == (0, 0)
    assert moved.exists()


async def test_a_drive_whose_tier_the_configuration_lost_is_refused_and_kept(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    """An operator who removes a tier that still has drives: their info still answers, their
    bytes are a clear 500 `system` (not a missing file), and destroy keeps row and file."""
    drive = (await create_drive(client, auth, SIZE, tier="archive"))["drive"]
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, drive, tier="gone")
    assert (await drive_info(client, auth, drive))["tier"] == "gone"
    for response in (
        await client.get(f"/drives/{drive}/read", headers=auth),
        await client.post(f"/drives/{drive}/write", data=b"x", headers=auth),
        await client.post(f"/drives/{drive}/destroy", headers=auth),
    ):
        assert response.status == 500, await response.text()
        assert response.headers["X-Elastic-Error"] == "system"
        assert "tier gone" in await response.text()
    assert (await drive_info(client, auth, drive))["tier"] == "gone"
    assert files_in(tmp_path / "archive") == [f"{drive}.img"]
    assert platform.drives.repair_files() == (0, 0)
    assert files_in(tmp_path / "archive") == [f"{drive}.img"]
