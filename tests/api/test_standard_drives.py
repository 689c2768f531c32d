"""The standard drive library over HTTP: listed for every user, read-only, imaged from
(docs/api.md §4, compat case 28)."""

import gzip
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.errors import MissingError, UsageError
from openhosting.model.common import EVERYONE
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store.tables import PLATFORM_USER
from openhosting.wire.text import parse_properties_list
from tests.api.drive_helpers import create_drive, drive_info, read_bytes
from tests.api.imaging_helpers import MiB, image, imaging_config, wait_imaged, wait_info
from tests.conftest import basic_auth

RAW = os.urandom(200_000) + bytes(3 * MiB) + b"the end"


@pytest.fixture
def storage() -> dict[str, int]:
    return {}


@pytest.fixture
def config(tmp_path: Path, storage: dict[str, int]) -> Config:
    return imaging_config(tmp_path, **storage)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    gz, iso = tmp_path / "debian.img.gz", tmp_path / "rescue.iso"
    gz.write_bytes(gzip.compress(RAW, compresslevel=1))
    iso.write_bytes(os.urandom(MiB) + b"iso end")
    return {"gzip": gz, "cdrom": iso}


@pytest.fixture
def library(platform: Platform, images: dict[str, Path]) -> dict[str, str]:
    """Two standard drives: a gzip disk image and a cdrom."""
    disk = platform.standard_drives.add(images["gzip"], "Debian 12", "disk", gzip=True)
    cdrom = platform.standard_drives.add(images["cdrom"], "Rescue CD", "cdrom")
    return {"disk": str(disk["drive"]), "cdrom": str(cdrom["drive"])}


async def test_case_28_standard_list_and_info_for_every_user(
    client: TestClient,
    auth: dict[str, str],
    other_user: NewKey,
    library: dict[str, str],
    images: dict[str, Path],
) -> None:
    for who in (auth, basic_auth(other_user)):
        response = await client.get("/drives/list/standard", headers=who)
        assert response.status == 200
        assert response.headers["X-Elastic-Output"] == "list"
        assert (await response.text()).split("\n") == [library["disk"], library["cdrom"], ""]
        response = await client.get("/drives/info/standard", headers=who)
        assert response.status == 200
        assert response.headers["X-Elastic-Output"] == "properties list"
        text = await response.text()
        assert "\n\n" in text
        disk, cdrom = parse_properties_list(text)
        assert disk == {
            "drive": library["disk"],
            "name": "Debian 12",
            "media": "disk",
            "size": str(images["gzip"].stat().st_size),
            "claim:type": "shared",
            "readers": EVERYONE,
            "format": "gzip",
            "rawsize": str(len(RAW)),
        }
        assert cdrom["media"] == "cdrom" and cdrom["size"] == str(MiB + 7)
        assert "format" not in cdrom and "rawsize" not in cdrom
    # Standard drives are no user's own drives.
    response = await client.get("/drives/list", headers=auth)
    assert await response.text() == ""


async def test_users_image_from_a_standard_gzip_drive_with_gunzip(
    client: TestClient, auth: dict[str, str], library: dict[str, str]
) -> None:
    dst = (await create_drive(client, auth, len(RAW), "aes-xts-plain"))["drive"]
    await image(client, auth, dst, library["disk"], "gunzip")
    info = await wait_imaged(client, auth, dst)
    assert "imaging:error" not in info
    assert await read_bytes(client, auth, f"/drives/{dst}/read") == RAW
    iso = (await create_drive(client, auth, 2 * MiB))["drive"]
    await image(client, auth, iso, library["cdrom"])
    await wait_imaged(client, auth, iso)
    expected = await read_bytes(client, auth, f"/drives/{library['cdrom']}/read")
    assert await read_bytes(client, auth, f"/drives/{iso}/read") == expected + bytes(MiB - 7)


async def test_standard_drives_are_read_only_to_users(
    client: TestClient, auth: dict[str, str], library: dict[str, str]
) -> None:
    drive = library["disk"]
    for path, body in (
        (f"/drives/{drive}/write/0", b"x"),
        (f"/drives/{drive}/set", b"name mine"),
        (f"/drives/{drive}/destroy", b""),
        (f"/drives/{drive}/image/{library['cdrom']}", b""),
    ):
        response = await client.post(path, data=body, headers=auth)
        assert response.status == 404, path
    response = await client.get(f"/drives/{drive}/read/0/2", headers=auth)
    assert await response.read() == b"\x1f\x8b"


@pytest.mark.parametrize("storage", [{"imaging_max_rate": MiB // 2}])
async def test_removing_a_standard_drive_mid_job_fails_the_job_with_its_reason(
    client: TestClient, auth: dict[str, str], platform: Platform, library: dict[str, str]
) -> None:
    dst = (await create_drive(client, auth, 2 * MiB))["drive"]
    await image(client, auth, dst, library["cdrom"])
    # Bytes are moving (at 0% the job may not have opened its source yet).
    await wait_info(client, auth, dst, lambda info: info.get("imaging", "0%")[0] in "123456789")
    # A source nobody writes is not claimed: servers can still attach it meanwhile.
    assert "claimed" not in (await drive_info(client, auth, library["cdrom"]))
    platform.standard_drives.remove(library["cdrom"])
    info = await wait_imaged(client, auth, dst)
    assert "destroyed during imaging" in info["imaging:error"]
    assert "claimed" not in info
    assert platform.imaging.list_jobs()[0].state == "failed"


def test_adding_checks_the_image(platform: Platform, images: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="not a gzip image"):
        platform.standard_drives.add(images["cdrom"], "fake", gzip=True)
    with pytest.raises(UsageError, match="cdrom"):
        platform.standard_drives.add(images["gzip"], "cd", "cdrom", gzip=True)
    with pytest.raises(UsageError):
        platform.standard_drives.add(images["gzip"].parent / "missing.img", "missing")
    with pytest.raises(UsageError):
        platform.standard_drives.add(images["gzip"], "floppy", "floppy")
    assert platform.standard_drives.list_uuids() == []
    assert list(platform.drives.files.root.iterdir()) == []
    with pytest.raises(MissingError):
        platform.standard_drives.remove("11111111-2222-3333-4444-555555555555")


def test_the_platform_user_is_nobody_anyone_can_log_in_as_or_manage(platform: Platform) -> None:
    assert not platform.accounts.has_users()  # the first user is still announced
    assert platform.accounts.list_users() == []
    for action in (platform.accounts.rotate_key, platform.accounts.delete_user):
        with pytest.raises(MissingError):
            action(PLATFORM_USER)
