"""Temporary directories on a disk file system, for tests of what only a disk does.

`/tmp` is often a tmpfs: it takes an O_DIRECT open and yet keeps every byte in the page cache,
so a test that a direct write skips the cache cannot pass there. Such tests ask for
`disk_directory`: pytest's own temporary directory when direct writes skip the cache there,
else a directory made inside this repository's working tree (a clone lives on a disk), else
None, and the test checks the fallback instead."""

import mmap
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096


def cached_bytes(path: Path) -> int:
    """How many bytes of `path` are in the page cache."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return int(out.stdout.strip())


def direct_writes_skip_the_cache(directory: Path) -> bool:
    """Whether a page written with O_DIRECT in `directory` stays out of the page cache."""
    probe = directory / ".o_direct_probe"
    page = mmap.mmap(-1, PAGE)  # page-aligned memory, as O_DIRECT wants
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, page, 0)
        finally:
            os.close(fd)
        return cached_bytes(probe) == 0
    except OSError:
        return False  # EINVAL: this file system refuses O_DIRECT
    finally:
        probe.unlink(missing_ok=True)
        page.close()


@contextmanager
def disk_directory(tmp_path: Path) -> Iterator[Path | None]:
    """A directory where O_DIRECT writes skip the page cache (removed afterwards), or None."""
    if direct_writes_skip_the_cache(tmp_path):
        yield tmp_path
        return
    try:
        made = Path(tempfile.mkdtemp(prefix=".test-disk-", dir=REPO))
    except OSError:
        yield None  # a read-only checkout: no disk directory to be had
        return
    try:
        yield made if direct_writes_skip_the_cache(made) else None
    finally:
        shutil.rmtree(made)
