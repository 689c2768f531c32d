"""Drive info and server info show the host that holds them (`host`, ours: docs/api.md §4,
§5); on a platform of one host `avoid` still only records (there is no choice to make)."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from openhosting.api.app import RUNNER_OPTIONS, build_app
from openhosting.api.handlers import HANDLERS
from openhosting.config import load_config
from openhosting.services.platform import Platform, open_platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.api.drive_helpers import create_drive, drive_info
from tests.conftest import basic_auth


@pytest.fixture
def named_platform(tmp_path: Path) -> Iterator[Platform]:
    config = load_config(
        env={},
        overrides={
            "state_dir": str(tmp_path / "state"),
            "first_user": False,
            "hypervisor": {"driver": "fake"},
            "host": {"name": "hv-one"},
        },
    )
    opened = open_platform(config)
    yield opened
    opened.close()


@pytest.fixture
async def named_client(aiohttp_client, named_platform: Platform) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    server = TestServer(build_app(named_platform, HANDLERS))
    await server.start_server(**RUNNER_OPTIONS)
    yield await aiohttp_client(server)


async def test_drive_info_and_lists_show_the_host_holding_the_drive(
    named_client: TestClient, named_platform: Platform
) -> None:
    auth = basic_auth(named_platform.accounts.create_user("alice"))
    drive = (await create_drive(named_client, auth, 1 << 20))["drive"]
    assert (await drive_info(named_client, auth, drive))["host"] == "hv-one"
    response = await named_client.get("/drives/info", headers=auth)
    assert [item["host"] for item in parse_properties_list(await response.text())] == ["hv-one"]
    with named_platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None and row.host == "hv-one"


async def test_avoid_naming_a_drive_on_the_only_host_still_creates_there_and_is_recorded(
    named_client: TestClient, named_platform: Platform
) -> None:
    auth = basic_auth(named_platform.accounts.create_user("alice"))
    first = (await create_drive(named_client, auth, 1 << 20))["drive"]
    second = await create_drive(named_client, auth, 1 << 20, avoid=f"{first} avoid1")
    assert second["host"] == "hv-one"
    with named_platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, second["drive"])
    assert row is not None and row.avoid == (first, "avoid1")


async def test_server_info_shows_the_host_it_runs_on(
    named_client: TestClient, named_platform: Platform
) -> None:
    auth = basic_auth(named_platform.accounts.create_user("alice"))
    response = await named_client.post(
        "/servers/create/stopped", data="name s\ncpu 1000\nmem 256\n", headers=auth
    )
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    assert info["host"] == "hv-one"
    response = await named_client.get(f"/servers/{info['server']}/info", headers=auth)
    assert parse_properties(await response.text())["host"] == "hv-one"


def test_a_standard_drive_is_on_the_host_whose_files_hold_it(
    named_platform: Platform, tmp_path: Path
) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x01" * 4096)
    added = named_platform.standard_drives.add(image, "Tiny", "disk")
    with named_platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, str(added["drive"]))
    assert row is not None and row.host == "hv-one"
