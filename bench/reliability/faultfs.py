"""A directory that fails with EIO on demand: `faultfs.c` (a FUSE passthrough) compiled at
run time with the C compiler and libfuse3-dev, mounted over a backing directory, its mode
switched by a control file and SIGUSR1. This kernel has no device-mapper, so no `error` or
`flakey` target; FUSE needs no new Python package."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

SOURCE = Path(__file__).with_name("faultfs.c")
MOUNT_TIMEOUT = 10.0
Mode = Literal["ok", "write", "all"]


def unavailable_reason() -> str | None:
    """Why a fault file system cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "mounting a FUSE file system for another process needs root"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        return "no gcc or pkg-config"
    found = subprocess.run(["pkg-config", "--exists", "fuse3"], check=False, timeout=10)
    if found.returncode != 0:
        return "no libfuse3-dev (pkg-config fuse3)"
    return None


def build(directory: Path) -> Path:
    """Compile faultfs.c into `directory`; the binary's path."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True, timeout=10).stdout.split()  # fmt: skip
    binary = directory / "faultfs"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), *flags],
                   check=True, timeout=120)  # fmt: skip
    return binary


class FaultFs:
    """`mount_point` shows `backing`; `set_mode` makes its I/O fail or heal at once."""

    def __init__(
        self, binary: Path, backing: Path, mount_point: Path, page_cache: bool = False
    ) -> None:
        """With `page_cache`, files go through the page cache (SQLite's WAL needs shared
        mmap, which direct I/O forbids); reads may then be answered without the disk."""
        self.backing, self.mount_point = backing, mount_point
        self._control = backing.parent / f"{mount_point.name}.faultfs-mode"
        self._control.write_text("ok")
        backing.mkdir(exist_ok=True)
        mount_point.mkdir(exist_ok=True)
        with open(backing.parent / f"{mount_point.name}.faultfs-log", "ab") as log:
            self._process = subprocess.Popen(
                [str(binary), str(backing), str(self._control), str(mount_point)],
                stdout=log, stderr=log,
                env={**os.environ, "FAULTFS_PAGE_CACHE": "1"} if page_cache else None,
            )  # fmt: skip
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not self._mounted():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"faultfs did not mount {mount_point}")
            time.sleep(0.05)

    def _mounted(self) -> bool:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == str(self.mount_point) for line in mounts)

    def set_mode(self, mode: Mode) -> None:
        """ok: everything passes; write: writes, syncs, allocations, truncates and creates
        fail with EIO; all: reads and opens too. Metadata always works."""
        self._control.write_text(mode)
        self._process.send_signal(signal.SIGUSR1)
        time.sleep(0.05)  # the handler runs when the helper is next scheduled

    def close(self) -> None:
        """Unmount (lazily if busy) and end the helper, by its PID."""
        if self._mounted():
            subprocess.run(["umount", "-l", str(self.mount_point)], check=False, timeout=30)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def __enter__(self) -> FaultFs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
