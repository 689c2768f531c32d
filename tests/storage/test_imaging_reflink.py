"""Imaging copies on a file system that can share blocks (XFS with reflink, on a loop device
made for the test): a plain copy shares SRC's blocks instead of writing them, and each side
stays its own when written later; an encrypted side is never shared (docs/imaging.md)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.storage import imaging
from openhosting.storage.imaging import CHUNK, Tracker
from testbed.reflink_fs import BLOCK, reflink_filesystem, shared_and_own_bytes
from tests.storage.test_imaging import ODD_SIZE, Drives, MiB, content, fill, scattered


@pytest.fixture
def drives(tmp_path: Path) -> Iterator[Drives]:
    with reflink_filesystem(tmp_path) as mount_point:
        made = Drives(mount_point / "drives")
        try:
            yield made
        finally:
            made.close()


def used_bytes(path: Path) -> int:
    """Bytes in use on the file system holding `path`."""
    space = os.statvfs(path)
    return (space.f_blocks - space.f_bfree) * space.f_frsize


def test_a_plain_copy_shares_the_blocks_of_src_and_takes_no_space(drives: Drives) -> None:
    src = drives.make("src", ODD_SIZE, "plain")
    data = {**scattered(ODD_SIZE), MiB: os.urandom(6 * MiB)}
    fill(src, data)
    dst = drives.make("dst", ODD_SIZE, "plain")
    fill(dst, {MiB: b"old bytes" * 1000})
    before = used_bytes(src.io.path)

    imaging.copy(src, dst, Tracker())

    assert content(dst) == content(src)
    shared, own = shared_and_own_bytes(dst.io.path)
    assert own == 0
    assert shared >= sum(len(piece) for piece in data.values())
    assert shared_and_own_bytes(src.io.path) == (shared, 0)
    # DST's old block went; nothing of SRC's data was written again.
    assert used_bytes(src.io.path) <= before


def test_each_side_of_a_shared_copy_stays_its_own_when_written(drives: Drives) -> None:
    src = drives.make("src", ODD_SIZE, "plain")
    fill(src, {0: os.urandom(4 * MiB)})
    original = content(src)
    dst = drives.make("dst", ODD_SIZE, "plain")
    imaging.copy(src, dst, Tracker())

    dst.io.write_at(MiB, b"written into DST")
    src.io.write_at(2 * MiB, b"written into SRC")

    assert content(src) == original[: 2 * MiB] + b"written into SRC" + original[2 * MiB + 16 :]
    assert content(dst) == original[:MiB] + b"written into DST" + original[MiB + 16 :]
    assert shared_and_own_bytes(dst.io.path)[1] > 0  # the block written is DST's own now


def test_a_shared_copy_keeps_the_size_of_dst(drives: Drives) -> None:
    big = drives.make("big", ODD_SIZE, "plain")
    fill(big, scattered(ODD_SIZE))
    small = drives.make("small", CHUNK + 5, "plain")
    imaging.copy(big, small, Tracker())
    assert os.stat(small.io.path).st_size == CHUNK + 5
    assert content(small) == content(big)[: CHUNK + 5]
    assert shared_and_own_bytes(small.io.path)[1] <= BLOCK

    larger = drives.make("larger", ODD_SIZE + 3 * MiB, "plain")
    fill(larger, {ODD_SIZE + MiB: b"stale"})
    imaging.copy(big, larger, Tracker())
    assert os.stat(larger.io.path).st_size == ODD_SIZE + 3 * MiB
    assert content(larger) == content(big) + bytes(3 * MiB)
    # SRC's partial last block is copied, not shared: DST does not end where SRC does.
    assert shared_and_own_bytes(larger.io.path)[1] <= BLOCK


@pytest.mark.parametrize(
    ("src_kind", "dst_kind"), [("plain", "encrypted"), ("encrypted", "plain"), ("encrypted",) * 2]
)
def test_a_copy_with_an_encrypted_side_shares_nothing(
    drives: Drives, src_kind: str, dst_kind: str
) -> None:
    src = drives.make("src", ODD_SIZE, src_kind)
    fill(src, scattered(ODD_SIZE))
    dst = drives.make("dst", ODD_SIZE, dst_kind)
    imaging.copy(src, dst, Tracker())
    assert content(dst) == content(src)
    assert shared_and_own_bytes(dst.io.path)[0] == 0
    assert shared_and_own_bytes(src.io.path)[0] == 0
