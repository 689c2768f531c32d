"""The disk directory that O_DIRECT tests ask for: with `/tmp` on a tmpfs (which takes O_DIRECT
and caches anyway), it is made inside the repository's working tree, and removed after."""

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.disk_tmp import REPO, direct_writes_skip_the_cache, disk_directory


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30, check=True)


def test_a_tmpfs_is_no_disk_for_o_direct(tmpfs_dir: Path) -> None:
    assert not direct_writes_skip_the_cache(tmpfs_dir)
    assert list(tmpfs_dir.iterdir()) == []  # the probe is gone


def test_the_working_tree_stands_in_for_a_tmpfs_and_is_cleaned_up(tmpfs_dir: Path) -> None:
    with disk_directory(tmpfs_dir) as directory:
        assert directory is not None and directory.parent == REPO
        assert direct_writes_skip_the_cache(directory)
        (directory / "image").write_bytes(b"x")
    assert not directory.exists()


def test_a_temporary_directory_on_a_disk_is_used_as_it_is() -> None:
    with tempfile.TemporaryDirectory(dir=REPO) as on_disk:
        with disk_directory(Path(on_disk)) as directory:
            assert directory == Path(on_disk)
        assert directory.exists()  # not ours to remove
