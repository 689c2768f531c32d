"""A directory's entries made durable: after a file is created or renamed into it, the name
survives a crash only once the directory itself is fsynced."""

import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """fsync `directory`, so that the names made or moved in it are on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
