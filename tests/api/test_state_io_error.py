"""The state database's disk fails (EIO): a change that cannot be committed answers 500
`failed` naming the I/O error (never `system`, never a 200 for what was not stored), and once
the disk heals the platform works on with everything it acknowledged before. The failing disk
is `faultfs` (a FUSE passthrough compiled for the test: this kernel has no device-mapper)."""

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from bench.reliability import faultfs

from openhosting.config import Config
from tests.api.drive_helpers import create_drive
from tests.api.faultfs_helpers import mounted_faultfs
from tests.conftest import config_in


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[faultfs.FaultFs]:
    yield from mounted_faultfs(tmp_path, "state", page_cache=True)


@pytest.fixture
def config(tmp_path: Path, faulty: faultfs.FaultFs) -> Config:
    """The shared `config` fixture, with the state (the database) on the failing disk."""
    return config_in(
        tmp_path,
        state_dir=str(faulty.mount_point),
        storage={"drive_dir": str(tmp_path / "drives")},
    )


async def test_a_change_the_failing_disk_refuses_is_500_failed_and_the_rest_survives(
    client: TestClient, auth: dict[str, str], faulty: faultfs.FaultFs, config: Config
) -> None:
    kept = (await create_drive(client, auth, 65536, "none"))["drive"]
    faulty.set_mode("write")
    try:
        refused = await client.post("/drives/create", data="size 65536", headers=auth)
        text = await refused.text()
        assert (refused.status, refused.headers["X-Elastic-Error"]) == (500, "failed"), text
        assert "Input/output error" in text
    finally:
        faulty.set_mode("ok")
    listed = await client.get("/drives/list", headers=auth)
    assert (await listed.text()).split() == [kept]  # the refused drive was never made
    again = (await create_drive(client, auth, 65536, "none"))["drive"]
    listed = await client.get("/drives/list", headers=auth)
    assert sorted((await listed.text()).split()) == sorted([kept, again])
    # Nor is its file left behind: the create's undo removed it.
    drive_dir = Path(config.storage.drive_dir)
    files = [path.stem for path in drive_dir.rglob("*.img")]
    assert sorted(files) == sorted([kept, again])
    # closing(): sqlite3's own context manager only commits; the connection would hold the
    # mount busy until collected, and faultfs would wait its 10 s before being killed.
    with contextlib.closing(sqlite3.connect(config.state_path / "openhosting.sqlite")) as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
