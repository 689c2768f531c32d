"""A `faultfs` mount for a test (a FUSE disk failing with EIO on demand; root only)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.reliability import faultfs


def mounted_faultfs(
    tmp_path: Path, mount_name: str, page_cache: bool = False
) -> Iterator[faultfs.FaultFs]:
    """Mount faultfs at `tmp_path`/`mount_name` for the test's length (a fixture body)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a FUSE file system for the daemon needs root")
    reason = faultfs.unavailable_reason()
    assert reason is None, f"{reason} (scripts/install-system-packages installs it)"
    binary = faultfs.build(tmp_path)
    mount_point = tmp_path / mount_name
    with faultfs.FaultFs(binary, tmp_path / "backing", mount_point, page_cache) as mounted:
        yield mounted
