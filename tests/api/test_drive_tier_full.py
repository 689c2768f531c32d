"""A full tier is full for its own drives only (docs/api.md §3, §4): the `ssd` tier is a
24 MiB tmpfs mounted for the test (root only) while `disk` keeps the state directory's file
system; writes and creates in `ssd` are 507 `full`, those in `disk` go on, and imaging out of
the full tier into `disk` crosses file systems. `/metrics` reports each tier's file system."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.platform import Platform
from openhosting.services.platform_state import read_platform_state
from tests.api.drive_helpers import create_drive, read_bytes
from tests.api.imaging_helpers import image, wait_imaged, write
from tests.api.tmpfs_helpers import small_tmpfs
from tests.conftest import config_in

MIB = 1 << 20
TMPFS_SIZE = 24 * MIB
DRIVE_SIZE = 64 * MIB  # larger than the tmpfs: sparse


@pytest.fixture
def ssd_dir(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "ssd", TMPFS_SIZE) as mount_point:
        yield mount_point


@pytest.fixture
def config(tmp_path: Path, ssd_dir: Path) -> Config:
    return config_in(tmp_path, storage={"tiers": f"ssd={ssd_dir}"})


async def test_a_full_tier_is_507_for_its_drives_while_the_others_go_on(
    client: TestClient, auth: dict[str, str], platform: Platform, ssd_dir: Path
) -> None:
    ssd = (await create_drive(client, auth, DRIVE_SIZE, tier="ssd"))["drive"]
    disk = (await create_drive(client, auth, DRIVE_SIZE))["drive"]
    space = os.statvfs(ssd_dir)
    filling = os.urandom(space.f_bavail * space.f_frsize)
    await write(client, auth, ssd, 0, filling)

    response = await client.post(
        f"/drives/{ssd}/write/{len(filling)}", data=os.urandom(MIB), headers=auth
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    response = await client.post(
        "/drives/create", data="size 1M\nencryption:cipher aes-xts-plain\ntier ssd", headers=auth
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    assert sorted(os.listdir(ssd_dir)) == [f"{ssd}.img"]

    # The disk tier has its own file system: more than the whole ssd tier fits there.
    data = os.urandom(32 * MIB)
    await write(client, auth, disk, 0, data)
    assert await read_bytes(client, auth, f"/drives/{disk}/read/0/{len(data)}") == data
    encrypted = (await create_drive(client, auth, MIB, "aes-xts-plain"))["drive"]

    # Out of the full tier into another file system: the copy crosses it.
    await image(client, auth, encrypted, ssd)
    info = await wait_imaged(client, auth, encrypted)
    assert "imaging:error" not in info, info
    assert await read_bytes(client, auth, f"/drives/{encrypted}/read") == filling[:MIB]

    state = read_platform_state(platform.engine, {}, platform.config.tier_paths, 2000)
    assert state.tier_bytes_total["ssd"] == TMPFS_SIZE
    assert state.tier_bytes_used["ssd"] >= len(filling)
    assert state.tier_bytes_total["disk"] != TMPFS_SIZE
    assert state.capacity_total["disk_bytes"] == state.tier_bytes_total["disk"]
