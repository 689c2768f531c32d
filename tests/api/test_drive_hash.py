"""`/drives/D/hash[/OFFSET[/SIZE]]` (our extension, docs/api.md §8): the SHA-256 of a range of
a drive's bytes as it holds them, over HTTP against real drive files and a real SQLite."""

import asyncio
import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.api.context import TRANSFER_LIMITER_KEY
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.storage import drive_hash, drive_transfers
from openhosting.storage.drive_hash import HASH_PIECE, HashStopped
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive, drive_info, read_bytes
from tests.conftest import basic_auth

CIPHERS = ["none", "aes-xts-plain"]
EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def hash_of(client: TestClient, auth: dict[str, str], path: str) -> dict[str, str]:
    response = await client.get(path, headers=auth)
    assert response.status == 200, await response.text()
    assert response.headers["X-Elastic-Output"] == "properties"
    return parse_properties(await response.text())


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_hash_is_the_sha256_of_the_bytes_a_read_answers(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    # Data across a hash piece's edge, a hole between, and a size that is no whole sector.
    size = HASH_PIECE + 3 * 65536 + 7
    drive = (await create_drive(client, auth, size, cipher))["drive"]
    head, tail = os.urandom(100_003), os.urandom(200_000)
    for offset, data in ((1, head), (HASH_PIECE - 100_000, tail)):
        response = await client.post(f"/drives/{drive}/write/{offset}", data=data, headers=auth)
        assert response.status == 204
    content = await read_bytes(client, auth, f"/drives/{drive}/read")
    assert len(content) == size
    answer = await hash_of(client, auth, f"/drives/{drive}/hash")
    assert answer == {
        "drive": drive,
        "offset": "0",
        "size": str(size),
        "algorithm": "sha256",
        "hash": sha256(content),
    }
    for offset, length in ((1, 100_003), (3, 7), (HASH_PIECE - 1, 2), (511, 1025), (0, size)):
        ranged = await hash_of(client, auth, f"/drives/{drive}/hash/{offset}/{length}")
        assert ranged["hash"] == sha256(content[offset : offset + length]), (offset, length)
        assert ranged["offset"] == str(offset) and ranged["size"] == str(length)
    from_1k = await hash_of(client, auth, f"/drives/{drive}/hash/1k")
    assert from_1k["hash"] == sha256(content[1024:]) and from_1k["offset"] == "1024"


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_hash_ranges_are_clamped_to_the_end_as_reads_are(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    payload = os.urandom(1001)
    drive = (await create_drive(client, auth, 1001, cipher))["drive"]
    await client.post(f"/drives/{drive}/write", data=payload, headers=auth)
    tail = await hash_of(client, auth, f"/drives/{drive}/hash/1000/50")
    assert (tail["size"], tail["hash"]) == ("1", sha256(payload[1000:]))
    for past in ("1001", "5000/10", "1T/1T"):
        empty = await hash_of(client, auth, f"/drives/{drive}/hash/{past}")
        assert (empty["size"], empty["hash"]) == ("0", sha256(b""))


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_never_written_drive_hashes_as_zeros_without_reading_them(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    size = 3 * HASH_PIECE + 5
    drive = (await create_drive(client, auth, size, cipher))["drive"]
    allocated = platform.drives.files.allocated_bytes(drive)
    answer = await hash_of(client, auth, f"/drives/{drive}/hash")
    assert answer["hash"] == sha256(bytes(size))
    # A mostly sparse drive: one written byte in the middle of the zeros.
    await client.post(f"/drives/{drive}/write/{HASH_PIECE + 9}", data=b"\x01", headers=auth)
    expected = bytearray(size)
    expected[HASH_PIECE + 9] = 1
    assert (await hash_of(client, auth, f"/drives/{drive}/hash"))["hash"] == sha256(expected)
    # Hashing wrote nothing and gave the file no blocks.
    assert platform.drives.files.allocated_bytes(drive) <= allocated + 64 * 1024


async def test_json_answer_has_numbers_for_offset_and_size(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 4096))["drive"]
    await client.post(f"/drives/{drive}/write", data=b"abc", headers=auth)
    response = await client.get(
        f"/drives/{drive}/hash/1/2", headers={**auth, "Accept": "application/json"}
    )
    assert response.status == 200
    assert json.loads(await response.text()) == {
        "drive": drive,
        "offset": 1,
        "size": 2,
        "algorithm": "sha256",
        "hash": sha256(b"bc"),
    }


async def test_post_works_and_the_drive_is_neither_changed_nor_counted_as_read(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 4096))["drive"]
    await client.post(f"/drives/{drive}/write", data=b"abc", headers=auth)
    response = await client.post(f"/drives/{drive}/hash/0/3", headers=auth)
    assert response.status == 200
    assert parse_properties(await response.text())["hash"] == sha256(b"abc")
    info = await drive_info(client, auth, drive)
    assert (info["read:bytes"], info["read:requests"], info["write:requests"]) == ("0", "0", "1")


@pytest.mark.parametrize(
    ("tail", "key"),
    [("abc", "offset"), ("-1", "offset"), ("1.5", "offset"), ("0/x", "size"),
     ("0/10P", "size"), ("99999999999999999999T", "offset"), ("0/-5", "size")],
)  # fmt: skip
async def test_bad_offsets_and_sizes_are_400_usage_naming_the_key(
    client: TestClient, auth: dict[str, str], tail: str, key: str
) -> None:
    drive = (await create_drive(client, auth, 4096))["drive"]
    response = await client.get(f"/drives/{drive}/hash/{tail}", headers=auth)
    assert response.status == 400, tail
    assert response.headers["X-Elastic-Error"] == "usage"
    assert key in await response.text()


async def test_other_users_drives_are_missing_and_readers_may_hash(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    private = (await create_drive(client, auth, 100))["drive"]
    shared = (await create_drive(client, auth, 100, readers=other_user.uuid))["drive"]
    public = (await create_drive(client, auth, 100, readers=EVERYONE))["drive"]
    other = basic_auth(other_user)
    for path in (f"/drives/{private}/hash", f"/drives/{private}/hash/0/10"):
        response = await client.get(path, headers=other)
        assert response.status == 404, path
        assert response.headers["X-Elastic-Error"] == "missing"
        assert "could not be found" in await response.text()
    missing = await client.get("/drives/00000000-0000-4000-8000-000000000000/hash", headers=auth)
    assert missing.status == 404
    for drive in (shared, public):
        assert (await hash_of(client, other, f"/drives/{drive}/hash"))["hash"] == sha256(bytes(100))


async def test_a_hash_counts_as_a_transfer(
    client: TestClient, auth: dict[str, str], user: NewKey
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    limiter = client.server.app[TRANSFER_LIMITER_KEY]  # type: ignore[union-attr]
    with contextlib.ExitStack() as held:
        for _ in range(16):  # max_transfers_per_user's default
            held.enter_context(limiter.admit(user.uuid))
        refused = await client.get(f"/drives/{drive}/hash", headers=auth)
        assert refused.status == 429
        assert refused.headers["X-Elastic-Error"] == "busy"
    assert (await client.get(f"/drives/{drive}/hash", headers=auth)).status == 200
    assert limiter.under_way == 0


async def test_a_client_that_leaves_mid_hash_stops_the_hash_before_its_file_is_closed(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 GiB of never-written zeros take far longer to hash than the test waits.
    drive = (await create_drive(client, auth, "64G"))["drive"]
    ended: list[BaseException | str] = []

    def recorded_hash_range(*args: object) -> str:
        try:
            digest = drive_hash.hash_range(*args)  # type: ignore[arg-type]
        except BaseException as error:
            ended.append(error)
            raise
        ended.append(digest)
        return digest

    monkeypatch.setattr(drive_transfers, "hash_range", recorded_hash_range)
    limiter = client.server.app[TRANSFER_LIMITER_KEY]  # type: ignore[union-attr]
    request = asyncio.ensure_future(client.get(f"/drives/{drive}/hash", headers=auth))
    for _ in range(200):
        if limiter.under_way:
            break
        await asyncio.sleep(0.01)
    assert limiter.under_way == 1
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    for _ in range(500):  # the handler is cancelled; its thread stops at its next piece
        if not limiter.under_way:
            break
        await asyncio.sleep(0.01)
    assert limiter.under_way == 0
    # The handler ended only once its thread had stopped: the file was never closed under it.
    assert len(ended) == 1 and isinstance(ended[0], HashStopped), ended
    # The drive is no longer being read: it may be shrunk.
    response = await client.post(f"/drives/{drive}/set", data="size 1M", headers=auth)
    assert response.status == 200, await response.text()


async def test_hashes_of_large_drives_do_not_hold_the_threads_of_other_commands(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    # The loop's default executor has cpu count + 4 threads; one user's hashes of large
    # drives, each within the transfer limits, held them all, and every drive create of
    # any user (its file is made in one) waited behind them for hours. Two threads here.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    drive = (await create_drive(client, auth, "64G"))["drive"]
    limiter = client.server.app[TRANSFER_LIMITER_KEY]  # type: ignore[union-attr]
    hashes = [
        asyncio.ensure_future(client.get(f"/drives/{drive}/hash", headers=auth)) for _ in range(3)
    ]
    try:
        for _ in range(200):
            if limiter.under_way == len(hashes):
                break
            await asyncio.sleep(0.01)
        assert limiter.under_way == len(hashes)
        other = basic_auth(other_user)
        created = await asyncio.wait_for(
            client.post("/drives/create", data="size 1M", headers=other), timeout=10
        )
        assert created.status == 200, await created.text()
        assert limiter.under_way == len(hashes)  # the hashes still run
    finally:
        for request in hashes:
            request.cancel()
        await asyncio.gather(*hashes, return_exceptions=True)
        for _ in range(500):  # each thread stops at its next piece
            if not limiter.under_way:
                break
            await asyncio.sleep(0.01)
    assert limiter.under_way == 0


async def test_every_user_may_hash_a_standard_drive(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    image = tmp_path / "rescue.iso"
    image.write_bytes(os.urandom(70_000))
    standard = platform.standard_drives.add(image, "Rescue CD", "cdrom")["drive"]
    answer = await hash_of(client, auth, f"/drives/{standard}/hash")
    assert (answer["size"], answer["hash"]) == ("70000", sha256(image.read_bytes()))
