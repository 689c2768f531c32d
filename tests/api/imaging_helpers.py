"""Helpers for API tests of imaging: write bytes, start a job, watch a drive's info."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.config import Config
from tests.api.drive_helpers import drive_info
from tests.conftest import config_in

MiB = 1024 * 1024


def imaging_config(tmp_path: Path, **storage: int) -> Config:
    """A test platform's configuration with imaging settings (e.g. a slow `imaging_max_rate`
    that keeps a job running long enough to watch)."""
    return config_in(tmp_path, storage=storage)


async def write(
    client: TestClient, auth: dict[str, str], drive: str, offset: int, data: bytes
) -> None:
    response = await client.post(f"/drives/{drive}/write/{offset}", data=data, headers=auth)
    assert response.status == 204, await response.text()


async def image(
    client: TestClient, auth: dict[str, str], dst: str, src: str, conversion: str = ""
) -> None:
    path = f"/drives/{dst}/image/{src}" + (f"/{conversion}" if conversion else "")
    response = await client.post(path, headers=auth)
    assert response.status == 204, await response.text()


async def wait_info(
    client: TestClient,
    auth: dict[str, str],
    drive: str,
    until: Callable[[dict[str, str]], bool],
    timeout: float = 20,
) -> dict[str, str]:
    """Poll a drive's info until `until(info)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        info = await drive_info(client, auth, drive)
        if until(info):
            return info
        assert time.monotonic() < deadline, f"gave up waiting; last info: {info}"
        await asyncio.sleep(0.01)


async def wait_imaged(
    client: TestClient, auth: dict[str, str], drive: str, timeout: float = 20
) -> dict[str, str]:
    """Wait until no imaging into `drive` is pending; its info then."""
    return await wait_info(client, auth, drive, lambda info: "imaging" not in info, timeout)


def is_progress(value: str | None) -> bool:
    return value is not None and value.endswith("%") and value[:-1].isdigit()
