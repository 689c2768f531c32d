"""Resizing a drive: while its file changes size nothing else may touch its bytes, a resize
that fails leaves the old size, and growing never shows what a shrink cut (the row is the
truth; the file follows it: see test_drive_repair.py for a daemon stopped half-way)."""

import asyncio
import errno
import os
import threading
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from tests.api.drive_helpers import create_drive, drive_holding, drive_info, read_bytes

CIPHERS = ["none", "aes-xts-plain"]
SIZE = 64 * 1024
WAIT_SECONDS = 10


async def assert_busy(response, *words: str) -> None:  # type: ignore[no-untyped-def]
    text = await response.text()
    assert response.status == 409, text
    assert response.headers["X-Elastic-Error"] == "busy"
    for word in words:
        assert word in text


class HeldResize:
    """Replaces the drive files' `resize` with one that waits, inside the thread doing it,
    until the test lets it go on."""

    def __init__(self, real: Callable[..., None]) -> None:
        self.real = real
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, *args: object) -> None:
        self.entered.set()
        if not self.release.wait(WAIT_SECONDS):
            raise TimeoutError("the test never let the resize go on")
        self.real(*args)


async def test_a_drive_being_resized_refuses_everything_that_touches_its_bytes(
    client: TestClient, auth: dict[str, str], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(SIZE)
    drive = await drive_holding(client, auth, payload)
    other = (await create_drive(client, auth, SIZE))["drive"]
    held = HeldResize(platform.drives.files.resize)
    monkeypatch.setattr(platform.drives.files, "resize", held)

    resize = asyncio.create_task(
        client.post(f"/drives/{drive}/set", data=f"size {2 * SIZE}", headers=auth)
    )
    assert await asyncio.to_thread(held.entered.wait, WAIT_SECONDS)
    try:
        await assert_busy(await client.get(f"/drives/{drive}/read", headers=auth), "resized")
        await assert_busy(
            await client.post(f"/drives/{drive}/write", data=b"x", headers=auth), "resized"
        )
        await assert_busy(await client.post(f"/drives/{drive}/image/{other}", headers=auth))
        await assert_busy(await client.post(f"/drives/{other}/image/{drive}", headers=auth))
        await assert_busy(
            await client.post(f"/drives/{drive}/set", data="size 100", headers=auth), "resized"
        )
        await assert_busy(await client.post(f"/drives/{drive}/destroy", headers=auth))
        server_body = f"name s\ncpu 500\nmem 64\nide:0:0 {drive}\nboot ide:0:0\n"
        created = await client.post("/servers/create/stopped", data=server_body, headers=auth)
        assert created.status == 409, await created.text()  # the drive cannot be attached
    finally:
        held.release.set()
    answer = await resize
    assert answer.status == 200, await answer.text()
    # Once it is done, the drive is as asked and usable again.
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == payload + bytes(SIZE)
    assert (await drive_info(client, auth, other))["size"] == str(SIZE)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_resize_that_fails_leaves_the_old_size(
    client: TestClient,
    auth: dict[str, str],
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
    cipher: str,
) -> None:
    payload = os.urandom(SIZE)
    drive = await drive_holding(client, auth, payload, cipher)
    real, calls = platform.drives.files.resize, []

    def full_disk(uuid: str, size: int, master_key: bytes | None, kept: int) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(uuid, size, master_key, kept)

    monkeypatch.setattr(platform.drives.files, "resize", full_disk)
    response = await client.post(f"/drives/{drive}/set", data=f"size {4 * SIZE}", headers=auth)
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    assert (await drive_info(client, auth, drive))["size"] == str(SIZE)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == payload


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_growing_never_shows_bytes_a_shrink_meant_to_cut(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    payload = os.urandom(SIZE)
    drive = await drive_holding(client, auth, payload, cipher)
    with platform.engine.begin() as connection:  # a shrink whose file was never cut
        drive_store.update_drive(connection, drive, size=1000)
    response = await client.post(f"/drives/{drive}/set", data=f"size {SIZE}", headers=auth)
    assert response.status == 200, await response.text()
    expected = payload[:1000] + bytes(SIZE - 1000)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == expected
