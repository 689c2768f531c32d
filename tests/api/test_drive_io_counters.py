"""The cumulative I/O counters of a drive (`read:bytes`, `read:requests`, `write:bytes`,
`write:requests`, docs/api.md §4) count the bytes that really moved, once per request that
moved them."""

import gzip

import pytest
from aiohttp.test_utils import TestClient

from tests.api.drive_helpers import create_drive, drive_info, read_bytes

CIPHERS = ["none", "aes-xts-plain"]


def counters(info: dict[str, str]) -> tuple[int, int, int, int]:
    return (
        int(info["read:bytes"]),
        int(info["read:requests"]),
        int(info["write:bytes"]),
        int(info["write:requests"]),
    )


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_clamped_read_counts_the_bytes_sent(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 10000, cipher))["drive"]
    assert len(await read_bytes(client, auth, f"/drives/{drive}/read/9000/5000")) == 1000
    assert len(await read_bytes(client, auth, f"/drives/{drive}/read")) == 10000
    assert counters(await drive_info(client, auth, drive)) == (11000, 2, 0, 0)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_head_read_sends_no_bytes_and_counts_none(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 10000, cipher))["drive"]
    response = await client.head(f"/drives/{drive}/read", headers=auth)
    assert response.status == 200
    assert response.headers["Content-Length"] == "10000"
    assert await response.read() == b""
    assert counters(await drive_info(client, auth, drive)) == (0, 0, 0, 0)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_gzip_write_counts_its_decompressed_bytes(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 1 << 20, cipher))["drive"]
    body = gzip.compress(bytes(300000))
    response = await client.post(
        f"/drives/{drive}/write", data=body, headers={**auth, "Content-Encoding": "gzip"}
    )
    assert response.status == 204, await response.text()
    assert counters(await drive_info(client, auth, drive)) == (0, 0, 300000, 1)


async def test_refused_writes_count_nothing(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    refused = [
        (f"/drives/{drive}/write", b"x" * 1001, {}),  # past the end: 507
        (f"/drives/{drive}/write/2000", b"x", {}),  # offset past the end: 507
        (f"/drives/{drive}/write", b"not gzip", {"Content-Encoding": "gzip"}),  # 400
        (f"/drives/{drive}/write", b"x", {"Content-Encoding": "br"}),  # 400
    ]
    for path, body, headers in refused:
        response = await client.post(path, data=body, headers={**auth, **headers})
        assert response.status in (400, 507), await response.text()
    assert counters(await drive_info(client, auth, drive)) == (0, 0, 0, 0)
