"""A small XFS file system with reflink, in a sparse file on a loop device, mounted for a test
or a benchmark (root only): where a copy can share its source's blocks instead of writing
them (the clone path of storage/imaging.py), which ext4, the usual root file system, cannot.

Everything made is undone on the way out: the mount, the loop device, the file."""

import contextlib
import fcntl
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

# mkfs.xfs refuses file systems under 300 MiB; the file is sparse, so only what is written
# (the log, the metadata, the test's data) takes space where it lives.
DEFAULT_SIZE = 1 << 30
# The file system's block, given to mkfs.xfs (its default too): the unit of sharing.
BLOCK = 4096
COMMAND_TIMEOUT = 60

# FS_IOC_FIEMAP (linux/fs.h, linux/fiemap.h): a file's extents and their flags.
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1  # dirty pages written first, so every extent is on disk
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3
_EXTENTS_PER_CALL = 256


def _run(*command: str) -> str:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True
    ).stdout


@contextlib.contextmanager
def reflink_filesystem(directory: Path, size: int = DEFAULT_SIZE) -> Iterator[Path]:
    """An XFS file system with reflink of `size` bytes mounted at `directory/xfs` (both made
    here, in `directory`), unmounted and deleted afterwards."""
    image = directory / "xfs.img"
    mount_point = directory / "xfs"
    mount_point.mkdir()
    with image.open("wb") as file:
        file.truncate(size)
    try:
        _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", "-b", f"size={BLOCK}", str(image))
        loop = _run("losetup", "--find", "--show", str(image)).strip()
        try:
            _run("mount", "-t", "xfs", loop, str(mount_point))
            try:
                yield mount_point
            finally:
                _run("umount", str(mount_point))
        finally:
            _run("losetup", "--detach", loop)
    finally:
        image.unlink()


def shared_and_own_bytes(path: Path) -> tuple[int, int]:
    """How many bytes of `path`'s data extents are shared with another file (reflinked), and
    how many are its own."""
    shared = own = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = 0
        while True:
            request = bytearray(
                _FIEMAP_HEADER.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0,
                                    _EXTENTS_PER_CALL, 0)
                + bytes(_FIEMAP_EXTENT.size * _EXTENTS_PER_CALL)
            )  # fmt: skip
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
            mapped = _FIEMAP_HEADER.unpack_from(request)[3]
            if mapped == 0:
                return shared, own
            for index in range(mapped):
                fields = _FIEMAP_EXTENT.unpack_from(
                    request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size
                )
                logical, length, flags = fields[0], fields[2], fields[5]
                if flags & FIEMAP_EXTENT_SHARED:
                    shared += length
                else:
                    own += length
                if flags & FIEMAP_EXTENT_LAST:
                    return shared, own
                start = logical + length
    finally:
        os.close(fd)
