"""`POST /drives/D/image/SRC` on a tier whose file system shares blocks (XFS with reflink, on
a loop device made for the test, root only): the copy is done without writing SRC's data
again, whatever DST's size, and each drive stays its own when written later; a copy from
another file system is written whole (docs/imaging.md)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from testbed.reflink_fs import BLOCK, reflink_filesystem, shared_and_own_bytes
from tests.api.drive_helpers import create_drive, read_bytes
from tests.api.imaging_helpers import image, wait_imaged, write
from tests.conftest import config_in

MIB = 1 << 20
SIZE = 64 * MIB
ODD_SIZE = SIZE + 123  # ends within a block


@pytest.fixture
def xfs_dir(tmp_path: Path) -> Iterator[Path]:
    with reflink_filesystem(tmp_path) as mount_point:
        yield mount_point


@pytest.fixture
def config(tmp_path: Path, xfs_dir: Path) -> Config:
    return config_in(tmp_path, storage={"tiers": f"xfs={xfs_dir}"})


async def test_a_copy_within_the_tier_shares_the_blocks_of_src(
    client: TestClient, auth: dict[str, str], xfs_dir: Path
) -> None:
    src = (await create_drive(client, auth, ODD_SIZE, tier="xfs"))["drive"]
    data = bytes(range(256)) * (8 * MIB // 256)
    await write(client, auth, src, 4 * MIB, data)
    await write(client, auth, src, ODD_SIZE - 10, b"the end!!!")
    # The same size; a smaller one that ends within a block of SRC's; a larger one, where
    # SRC's partial last block ends within DST.
    sizes = {"same": ODD_SIZE, "smaller": 8 * MIB + 1000, "larger": 2 * ODD_SIZE}
    copies = {}
    for name, size in sizes.items():
        copies[name] = dst = (await create_drive(client, auth, size, tier="xfs"))["drive"]
        await image(client, auth, dst, src)
        info = await wait_imaged(client, auth, dst)
        assert "imaging:error" not in info, info

    whole = await read_bytes(client, auth, f"/drives/{src}/read")
    for name, dst in copies.items():
        expected = (whole + bytes(sizes[name]))[: sizes[name]]
        assert await read_bytes(client, auth, f"/drives/{dst}/read") == expected, name
        shared, own = shared_and_own_bytes(xfs_dir / f"{dst}.img")
        # At most the part of a block past the last whole one is DST's own: copied.
        assert shared >= min(len(data), sizes[name] - 4 * MIB) - BLOCK and own <= BLOCK, name
    assert shared_and_own_bytes(xfs_dir / f"{copies['same']}.img")[1] == 0

    # Written later, each drive is its own.
    same = copies["same"]
    await write(client, auth, same, 5 * MIB, b"only in the copy")
    assert await read_bytes(client, auth, f"/drives/{src}/read") == whole
    changed = await read_bytes(client, auth, f"/drives/{same}/read/{5 * MIB}/16")
    assert changed == b"only in the copy"


async def test_a_copy_from_another_file_system_is_written_whole(
    client: TestClient, auth: dict[str, str], xfs_dir: Path
) -> None:
    src = (await create_drive(client, auth, SIZE))["drive"]  # the `disk` tier: not XFS
    data = bytes(range(256)) * (2 * MIB // 256)
    await write(client, auth, src, MIB, data)
    dst = (await create_drive(client, auth, SIZE, tier="xfs"))["drive"]
    await image(client, auth, dst, src)
    info = await wait_imaged(client, auth, dst)
    assert "imaging:error" not in info, info
    assert await read_bytes(client, auth, f"/drives/{dst}/read/{MIB}/{len(data)}") == data
    assert shared_and_own_bytes(xfs_dir / f"{dst}.img") == (0, len(data))
