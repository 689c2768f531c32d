"""The tiny test guest builder: a bootable MBR disk, byte-reproducible, cached by its recipe."""

import hashlib
import shutil
from pathlib import Path

import pytest

from testbed.build_guest import DISK_BYTES, build_tiny_guest

TOOLS = ("busybox", "syslinux", "mkfs.vfat", "mcopy", "sfdisk", "cpio", "depmod", "modprobe")


@pytest.fixture(autouse=True)
def _needs_the_build_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"guest build tools missing: {missing}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_are_identical_and_the_second_call_uses_the_cache(tmp_path: Path) -> None:
    first = build_tiny_guest(tmp_path / "one")
    second = build_tiny_guest(tmp_path / "two")
    assert first.name == second.name
    assert sha256(first) == sha256(second)

    built_at = first.stat().st_mtime_ns
    assert build_tiny_guest(tmp_path / "one") == first
    assert first.stat().st_mtime_ns == built_at
    # Nothing but the image is left in the cache directory.
    assert list((tmp_path / "one").iterdir()) == [first]


def test_the_image_is_a_sparse_read_only_mbr_disk_with_one_bootable_partition(
    tmp_path: Path,
) -> None:
    image = build_tiny_guest(tmp_path)
    assert image.stat().st_size == DISK_BYTES
    assert image.stat().st_blocks * 512 < DISK_BYTES  # holes were kept
    assert image.stat().st_mode & 0o222 == 0
    mbr = image.read_bytes()[:512]
    assert mbr[510:] == b"\x55\xaa"
    entry = mbr[446:462]
    assert entry[0] == 0x80  # bootable
    assert int.from_bytes(entry[8:12], "little") == 2048  # starts at 1 MiB
    boot_sector = image.read_bytes()[1024 * 1024 : 1024 * 1024 + 512]
    assert boot_sector[510:] == b"\x55\xaa"
    assert b"SYSLINUX" in boot_sector
