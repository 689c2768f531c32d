"""A refused drive write leaves the drive as it was (docs/api.md §3: no partial state). A gzip body
is good or bad only at its end (its CRC, its length), so its bytes reach the drive only once it
has proved whole: in memory when small, through a staging file in the drive directory when
larger (on an encrypted drive that file holds ciphertext only)."""

import gzip
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.storage.write_stage import MEMORY_BOUND
from tests.api.drive_helpers import create_drive, drive_info, read_bytes

MIB = 1 << 20
CIPHERS = ["none", "aes-xts-plain"]
# Small enough to stay in memory, and large enough to need a staging file.
SIZES = [6 * MIB, MEMORY_BOUND + 5 * MIB + 123]


def pattern(byte: int, length: int) -> bytes:
    return bytes([byte]) * length


def flip_crc(body: bytes) -> bytes:
    """The gzip body with a byte of its CRC-32 (the trailer's first four bytes) flipped."""
    damaged = bytearray(body)
    damaged[-8] ^= 0xFF
    return bytes(damaged)


def gzip_headers(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "Content-Encoding": "gzip"}


async def write_a(client: TestClient, auth: dict[str, str], drive: str, data: bytes) -> None:
    response = await client.post(f"/drives/{drive}/write/{MIB}", data=data, headers=auth)
    assert response.status == 204, await response.text()


def files_in(platform: Platform) -> list[str]:
    return sorted(os.listdir(platform.drives.files.root))


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("damage", ["crc flipped", "cut short"])
async def test_a_refused_gzip_write_leaves_the_drive_as_it_was(
    client: TestClient,
    auth: dict[str, str],
    platform: Platform,
    cipher: str,
    size: int,
    damage: str,
) -> None:
    drive = (await create_drive(client, auth, size + 2 * MIB, cipher))["drive"]
    before = pattern(0xA5, size)
    await write_a(client, auth, drive, before)
    files = files_in(platform)

    body = gzip.compress(pattern(0x5B, size), compresslevel=1)
    body = flip_crc(body) if damage == "crc flipped" else body[: len(body) - 3]
    response = await client.post(
        f"/drives/{drive}/write/{MIB}", data=body, headers=gzip_headers(auth)
    )
    assert response.status == 400, await response.text()
    assert response.headers["X-Elastic-Error"] == "usage"

    assert await read_bytes(client, auth, f"/drives/{drive}/read/{MIB}/{size}") == before
    info = await drive_info(client, auth, drive)
    assert (info["write:requests"], info["write:bytes"]) == ("1", str(size))
    assert files_in(platform) == files  # no staging file left behind


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", SIZES)
async def test_a_gzip_write_past_the_end_writes_nothing_at_all(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str, size: int
) -> None:
    drive = (await create_drive(client, auth, size + MIB, cipher))["drive"]
    before = pattern(0xA5, size)
    await write_a(client, auth, drive, before)

    # One byte more than fits from offset 1M: the first `size` bytes would fit.
    body = gzip.compress(pattern(0x5B, size + 1), compresslevel=1)
    response = await client.post(
        f"/drives/{drive}/write/{MIB}", data=body, headers=gzip_headers(auth)
    )
    assert response.status == 507, await response.text()
    assert response.headers["X-Elastic-Error"] == "full"
    assert await read_bytes(client, auth, f"/drives/{drive}/read/{MIB}/{size}") == before
    assert len(files_in(platform)) == 1


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", SIZES)
async def test_a_good_gzip_write_at_an_odd_offset_lands_exactly(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str, size: int
) -> None:
    """Staged through a file or not, with partial first and last sectors, the bytes around
    the write keep their value."""
    drive = (await create_drive(client, auth, size + 2 * MIB, cipher))["drive"]
    around = os.urandom(size + 2 * MIB)
    response = await client.post(f"/drives/{drive}/write", data=around, headers=auth)
    assert response.status == 204, await response.text()

    offset = MIB + 300  # not on a sector boundary; nor is its end
    data = os.urandom(size)
    response = await client.post(
        f"/drives/{drive}/write/{offset}",
        data=gzip.compress(data, compresslevel=1),
        headers=gzip_headers(auth),
    )
    assert response.status == 204, await response.text()
    expected = around[:offset] + data + around[offset + size :]
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == expected
    info = await drive_info(client, auth, drive)
    assert (info["write:requests"], info["write:bytes"]) == ("2", str(len(around) + size))
    assert len(files_in(platform)) == 1


async def test_an_encrypted_drives_staging_file_holds_no_plaintext(
    client: TestClient, auth: dict[str, str], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the staging file receives is ciphertext: no staged sector equals its plaintext."""
    from openhosting.storage import write_stage

    written: list[bytes] = []
    real_pwrite_all = write_stage.pwrite_all

    def recording(fd: int, data: bytearray, offset: int) -> None:
        written.append(bytes(data))
        real_pwrite_all(fd, data, offset)

    monkeypatch.setattr(write_stage, "pwrite_all", recording)
    size = MEMORY_BOUND + MIB
    drive = (await create_drive(client, auth, size, "aes-xts-plain"))["drive"]
    data = pattern(0x5B, size)
    response = await client.post(
        f"/drives/{drive}/write",
        data=gzip.compress(data, compresslevel=1),
        headers=gzip_headers(auth),
    )
    assert response.status == 204, await response.text()
    assert sum(map(len, written)) == size
    assert all(pattern(0x5B, 512) not in piece for piece in written)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == data


def test_staging_files_left_by_a_killed_daemon_are_removed_at_start(
    platform: Platform,
) -> None:
    root: Path = platform.drives.files.root
    leftover = root / "0123456789abcdef0123456789abcdef.staging"
    leftover.write_bytes(b"staged bytes of a write that was never applied")
    platform.drives.repair_files()
    assert not leftover.exists()


async def test_a_gzip_body_is_inflated_off_the_event_loop(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inflating is most of a gzip write's work (~15 ms a 5 MiB chunk): on the event loop it
    held every other request back, and the body's next pieces waited for it."""
    from openhosting.api.content_coding import GzipStreamDecoder

    threads: set[int] = set()
    real_feed = GzipStreamDecoder.feed

    def recorded_feed(self: GzipStreamDecoder, data: bytes) -> Iterator[bytes]:
        threads.add(threading.get_ident())
        return real_feed(self, data)

    monkeypatch.setattr(GzipStreamDecoder, "feed", recorded_feed)
    drive = (await create_drive(client, auth, 4 * MIB, "none"))["drive"]
    data = os.urandom(3 * MIB)
    response = await client.post(
        f"/drives/{drive}/write", data=gzip.compress(data, 1), headers=gzip_headers(auth)
    )
    assert response.status == 204, await response.text()
    assert threads and threading.get_ident() not in threads
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/{3 * MIB}") == data
