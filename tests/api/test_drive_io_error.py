"""A drive directory whose disk fails (EIO) (docs/api.md §4): a write or read that meets the
I/O error answers 500 `failed` naming it, not an internal error; what does not touch the
failing data keeps answering; once the disk heals, the acknowledged bytes are intact and
writes work again. The failing disk is `faultfs` (bench/reliability/faultfs.c, a FUSE
passthrough compiled for the test: this kernel has no device-mapper), root only."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from bench.reliability import faultfs

from openhosting.config import Config
from tests.api.drive_helpers import create_drive, read_bytes
from tests.api.faultfs_helpers import mounted_faultfs
from tests.conftest import config_in

KIB = 1024


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[faultfs.FaultFs]:
    yield from mounted_faultfs(tmp_path, "drives")


@pytest.fixture
def config(tmp_path: Path, faulty: faultfs.FaultFs) -> Config:
    """The shared `config` fixture, with drives on the failing disk (the database is not)."""
    return config_in(tmp_path, storage={"drive_dir": str(faulty.mount_point)})


async def assert_failed_with_eio(response: ClientResponse) -> None:
    text = await response.text()
    assert response.status == 500, text
    assert response.headers["X-Elastic-Error"] == "failed", text
    assert "Input/output error" in text


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_an_io_error_is_500_failed_naming_it_and_acknowledged_bytes_survive(
    client: TestClient, auth: dict[str, str], faulty: faultfs.FaultFs, cipher: str
) -> None:
    drive = (await create_drive(client, auth, 1024 * KIB, cipher))["drive"]
    first = os.urandom(64 * KIB)
    written = await client.post(f"/drives/{drive}/write", data=first, headers=auth)
    assert written.status == 204, await written.text()

    faulty.set_mode("write")
    await assert_failed_with_eio(
        await client.post(f"/drives/{drive}/write/0", data=os.urandom(4 * KIB), headers=auth)
    )
    await assert_failed_with_eio(await client.post("/drives/create", data="size 1M", headers=auth))
    listed = await client.get("/drives/list", headers=auth)
    assert listed.status == 200 and drive in await listed.text()

    faulty.set_mode("all")
    await assert_failed_with_eio(await client.get(f"/drives/{drive}/read/0/4096", headers=auth))
    assert (await client.get("/account/info", headers=auth)).status == 200

    faulty.set_mode("ok")
    # The refused write may have reached part of its range: only the rest is known.
    back = await read_bytes(client, auth, f"/drives/{drive}/read/0/{64 * KIB}")
    assert back[4 * KIB :] == first[4 * KIB :]
    again = os.urandom(4 * KIB)
    rewritten = await client.post(f"/drives/{drive}/write/0", data=again, headers=auth)
    assert rewritten.status == 204, await rewritten.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/{64 * KIB}") == (
        again + first[4 * KIB :]
    )
