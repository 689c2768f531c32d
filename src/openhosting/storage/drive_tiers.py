"""Storage tiers: each tier's drive files in the tier's own directory (its own file system in
production), so that a full tier is full for its drives only.

Tiers configured with the same directory share one `DriveFiles` (one set of locks, one
directory to scan).
"""

from collections.abc import Mapping
from pathlib import Path

from openhosting.storage.drive_files import DriveFiles


class DriveTiers:
    """The drive files of every tier."""

    def __init__(self, directories: Mapping[str, Path], default: str = "disk") -> None:
        by_directory: dict[Path, DriveFiles] = {}
        self._tiers: dict[str, DriveFiles] = {}
        for name, directory in directories.items():
            key = directory.absolute()
            if key not in by_directory:
                by_directory[key] = DriveFiles(directory)
            self._tiers[name] = by_directory[key]
        self.default = default
        self._directories = list(by_directory.values())

    @property
    def names(self) -> tuple[str, ...]:
        """The tiers, in the configuration's order (`disk` first)."""
        return tuple(self._tiers)

    def of(self, tier: str) -> DriveFiles:
        """The drive files of `tier` (KeyError for a tier the configuration has not)."""
        return self._tiers[tier]

    def directories(self) -> list[DriveFiles]:
        """Each distinct drive directory once."""
        return list(self._directories)

    def watch(self) -> None:
        """Watch each directory from now on (storage/directory_watch.py), on the running
        event loop."""
        for files in self._directories:
            files.watch()

    def close(self) -> None:
        """Stop watching the directories (storage/directory_watch.py)."""
        for files in self._directories:
            files.close()

    def directory_of(self, tier: str) -> Path:
        return self._tiers[tier].root
