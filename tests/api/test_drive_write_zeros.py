"""Zeros written to a drive take no disk (docs/api.md §3, "Zeros take no disk"): a small gzip
body that inflates to a gigabyte of zeros, or a raw body of zeros, leaves a plain drive's
file holding only the data, and the staging of a gzip body holds only the data too. Zeros
written over data free its blocks; every byte reads back as written."""

import os
import zlib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from isal import isal_zlib

from openhosting.services.platform import Platform
from openhosting.storage.write_stage import WriteStage
from tests.api.drive_helpers import create_drive, read_bytes

MIB = 1 << 20
GIB = 1 << 30
SLACK = 4 * 64 * 1024  # blocks at the edges of the zero runs, partly data


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def gzip_of(*parts: bytes | int) -> bytes:
    """A gzip body of `parts` one after another, an int standing for that many zeros."""
    compressor = isal_zlib.compressobj(1, zlib.DEFLATED, 31)
    body = []
    zeros = bytes(MIB)
    for part in parts:
        if isinstance(part, int):
            body += [
                compressor.compress(zeros[: min(MIB, part - at)]) for at in range(0, part, MIB)
            ]
        else:
            body.append(compressor.compress(part))
    return b"".join([*body, compressor.flush()])


@pytest.fixture
def staged_on_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The disk each staged write's staging file takes when it is applied (its peak: the
    staging file only grows until then)."""
    seen: list[int] = []
    real_apply = WriteStage.apply

    def recording_apply(self: WriteStage) -> None:
        if self._fd is None:
            seen.append(0)
        else:
            self.spill()  # what is still held goes to the file first, as `apply` does
            seen.append(os.fstat(self._fd).st_blocks * 512)
        real_apply(self)

    monkeypatch.setattr(WriteStage, "apply", recording_apply)
    return seen


async def test_a_small_gzip_body_of_a_gigabyte_of_zeros_takes_only_its_datas_disk(
    client: TestClient, auth: dict[str, str], platform: Platform, staged_on_disk: list[int]
) -> None:
    size = 2 * GIB
    drive = (await create_drive(client, auth, size))["drive"]
    path = platform.drives.files.path_of(drive)
    old = os.urandom(8 * MIB)  # data the zeros will write over
    response = await client.post(f"/drives/{drive}/write/{512 * MIB}", data=old, headers=auth)
    assert response.status == 204, await response.text()
    before = allocated(path)

    offset = MIB + 300
    first, last = os.urandom(3 * MIB // 2), os.urandom(3 * MIB // 2)
    body = gzip_of(first, GIB, last)
    assert len(body) < 5 * MIB
    response = await client.post(
        f"/drives/{drive}/write/{offset}",
        data=body,
        headers={**auth, "Content-Encoding": "gzip"},
    )
    assert response.status == 204, await response.text()

    assert staged_on_disk == [pytest.approx(3 * MIB, abs=SLACK)]
    # The data's blocks came, and the old data's went: nothing for the gigabyte of zeros.
    assert allocated(path) <= before - len(old) + len(first) + len(last) + SLACK
    zeros_at = offset + len(first)
    read = f"/drives/{drive}/read"
    assert await read_bytes(client, auth, f"{read}/{offset}/{len(first)}") == first
    assert await read_bytes(client, auth, f"{read}/{zeros_at + GIB}/{len(last)}") == last
    assert await read_bytes(client, auth, f"{read}/{512 * MIB}/{len(old)}") == bytes(len(old))
    assert await read_bytes(client, auth, f"{read}/{zeros_at}/{4 * MIB}") == bytes(4 * MIB)


async def test_an_encrypted_drive_takes_its_zeros_as_ciphertext_not_staged(
    client: TestClient, auth: dict[str, str], staged_on_disk: list[int]
) -> None:
    drive = (await create_drive(client, auth, 80 * MIB, "aes-xts-plain"))["drive"]
    response = await client.post(f"/drives/{drive}/write", data=b"\xa5" * 80 * MIB, headers=auth)
    assert response.status == 204, await response.text()
    offset, first, last = MIB + 300, os.urandom(MIB), os.urandom(MIB)
    response = await client.post(
        f"/drives/{drive}/write/{offset}",
        data=gzip_of(first, 64 * MIB, last),
        headers={**auth, "Content-Encoding": "gzip"},
    )
    assert response.status == 204, await response.text()
    assert staged_on_disk == [pytest.approx(2 * MIB, abs=SLACK)]
    expected = b"\xa5" * offset + first + bytes(64 * MIB) + last
    expected += b"\xa5" * (80 * MIB - len(expected))
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == expected


@pytest.mark.parametrize("over", ["holes", "old data"])
async def test_a_raw_write_of_zeros_takes_no_disk_and_frees_what_it_overwrites(
    client: TestClient, auth: dict[str, str], platform: Platform, over: str
) -> None:
    drive = (await create_drive(client, auth, 16 * MIB))["drive"]
    path = platform.drives.files.path_of(drive)
    if over == "old data":
        response = await client.post(
            f"/drives/{drive}/write", data=os.urandom(16 * MIB), headers=auth
        )
        assert response.status == 204, await response.text()
    before = allocated(path)
    response = await client.post(f"/drives/{drive}/write/{MIB}", data=bytes(5 * MIB), headers=auth)
    assert response.status == 204, await response.text()
    assert allocated(path) == (before if over == "holes" else before - 5 * MIB)
    read = await read_bytes(client, auth, f"/drives/{drive}/read/{MIB}/{5 * MIB}")
    assert read == bytes(5 * MIB)
