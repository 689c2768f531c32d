"""Encrypted drives are LUKS1 containers that QEMU opens with the drive's passphrase: bytes
written through the API are what QEMU reads, and bytes QEMU writes are what the API reads.
The passphrase goes to QEMU in a 0600 file, never in argv."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from tests.api.drive_helpers import create_drive, read_bytes

MIB = 1 << 20
SIZE = 4 * MIB
QEMU_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io are needed (Debian package qemu-utils)",
)


def luks_image_opts(platform: Platform, drive: str, secret_dir: Path) -> list[str]:
    """qemu-img / qemu-io arguments opening `drive` as LUKS with its passphrase."""
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None
    passphrase = platform.drives.passphrase_of(row)
    assert passphrase is not None
    secret = secret_dir / f"{drive}.secret"
    secret.touch(mode=0o600)
    secret.write_bytes(passphrase)
    path = platform.drives.files.path_of(drive)
    return [
        "--object", f"secret,id=sec0,file={secret},format=raw",
        "--image-opts", f"driver=luks,key-secret=sec0,file.filename={path}",
    ]  # fmt: skip


def run_qemu_tool(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    assert result.returncode == 0, f"{argv[0]} failed: {result.stderr}{result.stdout}"
    # qemu-io reports a failed command on stdout but still exits 0.
    assert "error" not in result.stdout.lower(), result.stdout


async def test_bytes_written_through_the_api_are_what_qemu_img_reads(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    drive = (await create_drive(client, auth, SIZE, "aes-xts-plain"))["drive"]
    expected = bytearray(os.urandom(SIZE))
    response = await client.post(f"/drives/{drive}/write", data=bytes(expected), headers=auth)
    assert response.status == 204, await response.text()
    # A write that starts and ends inside sectors: the daemon re-encrypts the edge sectors.
    odd = os.urandom(3001)
    response = await client.post(f"/drives/{drive}/write/1000001", data=odd, headers=auth)
    assert response.status == 204, await response.text()
    expected[1000001 : 1000001 + len(odd)] = odd

    out = tmp_path / "converted.raw"
    run_qemu_tool(
        ["qemu-img", "convert", *luks_image_opts(platform, drive, tmp_path), "-O", "raw",
         str(out)]
    )  # fmt: skip
    assert out.read_bytes() == expected


async def test_bytes_written_by_qemu_io_are_what_the_api_reads(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    drive = (await create_drive(client, auth, SIZE, "aes-xts-plain"))["drive"]
    expected = bytearray(os.urandom(SIZE))
    response = await client.post(f"/drives/{drive}/write", data=bytes(expected), headers=auth)
    assert response.status == 204, await response.text()

    # Aligned, and unaligned (QEMU read-modify-writes the edge sectors with the same key).
    writes = [(0xAB, 65536, 131072), (0xCD, 2000003, 5000)]
    commands = [arg for fill, at, n in writes for arg in ("-c", f"write -P {fill:#x} {at} {n}")]
    run_qemu_tool(["qemu-io", *luks_image_opts(platform, drive, tmp_path), *commands])
    for fill, at, length in writes:
        expected[at : at + length] = bytes([fill]) * length

    assert await read_bytes(client, auth, f"/drives/{drive}/read") == expected
    assert await read_bytes(client, auth, f"/drives/{drive}/read/1999999/5010") == bytes(
        expected[1999999 : 1999999 + 5010]
    )


async def test_a_fresh_drive_written_only_by_qemu_reads_as_zeros_elsewhere(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    drive = (await create_drive(client, auth, SIZE, "aes-xts-plain"))["drive"]
    run_qemu_tool(
        ["qemu-io", *luks_image_opts(platform, drive, tmp_path), "-c", "write -P 0x5a 1M 64k"]
    )
    expected = bytearray(SIZE)
    expected[MIB : MIB + 65536] = b"\x5a" * 65536
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == expected


async def test_qemu_refuses_the_drive_with_another_passphrase(
    client: TestClient, auth: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    # The interop above is real: QEMU decrypts with the drive's key, not whatever it is given.
    drive = (await create_drive(client, auth, MIB, "aes-xts-plain"))["drive"]
    argv = luks_image_opts(platform, drive, tmp_path)
    (tmp_path / f"{drive}.secret").write_bytes(b"not-the-passphrase")
    result = subprocess.run(
        ["qemu-img", "convert", *argv, "-O", "raw", str(tmp_path / "out.raw")],
        capture_output=True, text=True, timeout=QEMU_TIMEOUT,
    )  # fmt: skip
    assert result.returncode != 0
    assert "cannot unlock any keyslot" in result.stderr, result.stderr
