"""A drive write that runs out of platform storage (docs/api.md §3, §4): 507 `full`, and the drive
is as it was (the write's blocks are allocated before its first byte is written). The drive
directory is a 24 MiB tmpfs mounted for the test (root only), holding drives larger than
itself: they are sparse."""

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.platform import Platform
from tests.api.drive_helpers import create_drive, drive_info, read_bytes
from tests.api.tmpfs_helpers import small_tmpfs
from tests.conftest import config_in

MIB = 1 << 20
TMPFS_SIZE = 24 * MIB
DRIVE_SIZE = 64 * MIB  # larger than the tmpfs


@pytest.fixture
def small_drive_dir(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", TMPFS_SIZE) as mount_point:
        yield mount_point


@pytest.fixture
def config(tmp_path: Path, small_drive_dir: Path) -> Config:
    """The shared `config` fixture, with drives on the small tmpfs (the database is not)."""
    return config_in(tmp_path, storage={"drive_dir": str(small_drive_dir)})


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_running_out_of_space_is_507_full_and_leaves_the_drive_as_it_was(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    drive = (await create_drive(client, auth, DRIVE_SIZE, cipher))["drive"]
    first = os.urandom(8 * MIB)
    response = await client.post(f"/drives/{drive}/write", data=first, headers=auth)
    assert response.status == 204, await response.text()

    # 32 MiB more fit in the drive but not on the 24 MiB the platform has.
    response = await client.post(
        f"/drives/{drive}/write/{8 * MIB}", data=os.urandom(32 * MIB), headers=auth
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"

    # Refused before any byte was written: the drive is as it was.
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == first + bytes(
        DRIVE_SIZE - 8 * MIB
    )
    info = await drive_info(client, auth, drive)
    assert (info["write:requests"], info["write:bytes"]) == ("1", str(8 * MIB))
    # The drive is not left busy or broken: bytes already stored can be rewritten in place,
    # and the drive can be destroyed, which gives the space back.
    response = await client.post(f"/drives/{drive}/write/4096", data=b"again", headers=auth)
    assert response.status == 204, await response.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/4094/9") == (
        first[4094:4096] + b"again" + first[4101:4103]
    )
    response = await client.post(f"/drives/{drive}/destroy", headers=auth)
    assert response.status == 204
    space = os.statvfs(platform.drives.files.root)
    assert space.f_bavail * space.f_frsize > TMPFS_SIZE - MIB


async def test_a_drive_cannot_be_created_when_its_header_does_not_fit(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    # Fill the tmpfs with a plain drive written to the brim, then ask for an encrypted one:
    # its LUKS header and key material need real blocks.
    drive = (await create_drive(client, auth, DRIVE_SIZE))["drive"]
    space = os.statvfs(platform.drives.files.root)
    response = await client.post(
        f"/drives/{drive}/write", data=os.urandom(space.f_bavail * space.f_frsize), headers=auth
    )
    assert response.status == 204, await response.text()
    response = await client.post(
        "/drives/create", data="size 1M\nencryption:cipher aes-xts-plain", headers=auth
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    assert sorted(os.listdir(platform.drives.files.root)) == [f"{drive}.img"]


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_a_gzip_write_that_does_not_fit_on_the_platform_changes_nothing(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    """Staged in memory, it is checked whole; its blocks are then allocated before it is
    applied, so a platform with room for half of it refuses it with the drive unchanged."""
    drive = (await create_drive(client, auth, DRIVE_SIZE, cipher))["drive"]
    space = os.statvfs(platform.drives.files.root)
    room = space.f_bavail * space.f_frsize
    first = os.urandom(room - 3 * MIB)  # leaves 3 MiB free
    response = await client.post(f"/drives/{drive}/write", data=first, headers=auth)
    assert response.status == 204, await response.text()

    body = gzip.compress(os.urandom(6 * MIB), compresslevel=1)
    response = await client.post(
        f"/drives/{drive}/write/{len(first)}",
        data=body,
        headers={**auth, "Content-Encoding": "gzip"},
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == first + bytes(
        DRIVE_SIZE - len(first)
    )
