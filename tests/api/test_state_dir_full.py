"""The whole state directory full (database, its WAL and the drives on one small tmpfs): every
command that needs space is 507 `full`, never 500; the audit trail never changes an answer;
and destroying a drive or a server still works, since that is how a user frees space."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive, drive_info, read_bytes
from tests.api.tmpfs_helpers import small_tmpfs
from tests.conftest import config_in

MIB = 1 << 20
TMPFS_SIZE = 32 * MIB
DRIVE_SIZE = 64 * MIB  # larger than the tmpfs: sparse until written


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Config]:
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE) as state_dir:
        yield config_in(tmp_path, state_dir=str(state_dir))


def free_bytes(path: Path) -> int:
    space = os.statvfs(path)
    return space.f_bavail * space.f_frsize


async def fill_the_disk(
    client: TestClient, auth: dict[str, str], platform: Platform, drive: str
) -> None:
    """Write the drive until the file system has no block left."""
    room = free_bytes(platform.config.state_path)
    response = await client.post(f"/drives/{drive}/write", data=os.urandom(room), headers=auth)
    assert response.status == 204, await response.text()
    assert free_bytes(platform.config.state_path) == 0


def assert_full(status: int, headers: dict[str, str], text: str) -> None:
    assert (status, headers.get("X-Elastic-Error")) == (507, "full"), text


@pytest.mark.parametrize("first", ["drive", "server"])
async def test_a_full_state_directory_is_507_full_and_destroy_frees_it(
    client: TestClient, auth: dict[str, str], platform: Platform, first: str
) -> None:
    drive = (await create_drive(client, auth, DRIVE_SIZE))["drive"]
    response = await client.post(
        "/servers/create/stopped", data="name s\ncpu 1000\nmem 256\n", headers=auth
    )
    assert response.status == 200, await response.text()
    server = parse_properties(await response.text())["server"]
    await fill_the_disk(client, auth, platform, drive)

    # Commands that must write rows: 507 full, in their own words.
    for path, body in [
        ("/drives/create", "name more\nsize 1M\nencryption:cipher none"),
        (f"/drives/{drive}/set", "name renamed"),
        ("/resources/vlan/create", "name office"),
    ]:
        for _ in range(3):  # and again: a failed commit leaves nothing that turns into a 500
            response = await client.post(path, data=body, headers=auth)
            assert_full(response.status, dict(response.headers), await response.text())
    # A read still reads.
    assert (await drive_info(client, auth, drive))["name"] == "test"

    # Destroying works though the disk is full when it starts (either one first), and
    # destroying the drive frees the space.
    paths = [f"/drives/{drive}/destroy", f"/servers/{server}/destroy"]
    for path in paths if first == "drive" else paths[::-1]:
        response = await client.post(path, headers=auth)
        assert response.status == 204, await response.text()
    assert not platform.drives.files.path_of(drive).exists()
    assert free_bytes(platform.config.state_path) > TMPFS_SIZE // 2

    # Everything works again, and the audit trail has what could be recorded.
    response = await client.post(
        "/drives/create", data="name again\nsize 1M\nencryption:cipher none", headers=auth
    )
    assert response.status == 200, await response.text()
    recorded = [(entry.path, entry.status) for entry in platform.audit.history()]
    assert (f"/drives/{drive}/destroy", 204) in recorded


async def test_an_audit_trail_that_cannot_be_written_changes_no_answer(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, DRIVE_SIZE))["drive"]
    await fill_the_disk(client, auth, platform, drive)
    # A write in place needs no new block of the drive, but its audit entry and its I/O
    # counters need the database to grow; the write's own answer stands, and so does a
    # read's (its counters cannot be written either).
    response = await client.post(f"/drives/{drive}/write/4096", data=b"again", headers=auth)
    assert response.status == 204, await response.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/4096/5") == b"again"
    # A refusal keeps its own status and error type, not the audit's failure.
    response = await client.post(f"/drives/{drive}/write", data=bytes(DRIVE_SIZE + 1), headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (507, "full")
    response = await client.post(f"/drives/{drive}/set", data="size lots", headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (400, "usage")
