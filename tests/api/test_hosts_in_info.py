"""Drive info and server info show the host that holds them (`host`, ours: docs/api.md §4,
§5); on a platform of one host `avoid` still only records (there is no choice to make)."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.api.drive_helpers import create_drive, drive_info
from tests.conftest import basic_auth, config_in


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_in(tmp_path, hypervisor={"driver": "fake"}, host={"name": "hv-one"})


async def test_drive_info_and_lists_show_the_host_holding_the_drive(
    client: TestClient, platform: Platform
) -> None:
    auth = basic_auth(platform.accounts.create_user("alice"))
    drive = (await create_drive(client, auth, 1 << 20))["drive"]
    assert (await drive_info(client, auth, drive))["host"] == "hv-one"
    response = await client.get("/drives/info", headers=auth)
    assert [item["host"] for item in parse_properties_list(await response.text())] == ["hv-one"]
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None and row.host == "hv-one"


async def test_avoid_naming_a_drive_on_the_only_host_still_creates_there_and_is_recorded(
    client: TestClient, platform: Platform
) -> None:
    auth = basic_auth(platform.accounts.create_user("alice"))
    first = (await create_drive(client, auth, 1 << 20))["drive"]
    second = await create_drive(client, auth, 1 << 20, avoid=f"{first} avoid1")
    assert second["host"] == "hv-one"
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, second["drive"])
    assert row is not None and row.avoid == (first, "avoid1")


async def test_server_info_shows_the_host_it_runs_on(
    client: TestClient, platform: Platform
) -> None:
    auth = basic_auth(platform.accounts.create_user("alice"))
    response = await client.post(
        "/servers/create/stopped", data="name s\ncpu 1000\nmem 256\n", headers=auth
    )
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    assert info["host"] == "hv-one"
    response = await client.get(f"/servers/{info['server']}/info", headers=auth)
    assert parse_properties(await response.text())["host"] == "hv-one"


def test_a_standard_drive_is_on_the_host_whose_files_hold_it(
    platform: Platform, tmp_path: Path
) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x01" * 4096)
    added = platform.standard_drives.add(image, "Tiny", "disk")
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, str(added["drive"]))
    assert row is not None and row.host == "hv-one"
