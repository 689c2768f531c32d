"""`DriveStorage` over this host's drive files (storage/drive_files.py, one directory per
tier): what the daemon did before the seam, unchanged, and what a host agent serves for the
drives it holds (agent/storage_routes.py)."""

import asyncio
import functools
import heapq
from pathlib import Path

from openhosting.errors import SystemError_
from openhosting.reverter import Reverter
from openhosting.storage.drive_files import DriveFiles
from openhosting.storage.drive_storage import (
    FILES_PAGE,
    BodyDecoder,
    DriveBytes,
    DriveFile,
    ReadClosed,
    WriteClosed,
)
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.drive_transfers import (
    DriveWriter,
    ReadPlan,
    StagedDriveWriter,
    storage_error,
)
from openhosting.storage.write_stage import WriteStage


class LocalDriveStorage:
    """The drives whose files are in this host's tier directories."""

    def __init__(self, tiers: DriveTiers) -> None:
        self.tiers = tiers

    def files_of(self, drive: str, tier: str) -> DriveFiles:
        """The drive files of `tier`; SystemError_ when the configuration no longer has it."""
        try:
            return self.tiers.of(tier)
        except KeyError:
            # The configuration no longer names the tier: its file is nowhere we know.
            raise SystemError_(
                f"Drive {drive} is in tier {tier}, which this platform's configuration no"
                " longer has"
            ) from None

    def is_available(self, drive: str, tier: str) -> bool:
        try:
            return self.tiers.of(tier).is_available(drive)
        except KeyError:
            return False  # a tier the configuration no longer has: its file is unreachable

    def disk_path(self, drive: str, tier: str) -> Path:
        return self.files_of(drive, tier).path_of(drive)

    async def create(
        self, drive: str, tier: str, size: int, passphrase: bytes | None
    ) -> bytes | None:
        files = self.files_of(drive, tier)
        try:
            if passphrase is None:
                await asyncio.to_thread(files.create_plain, drive, size)
                return None
            return await asyncio.to_thread(files.create_encrypted, drive, size, passphrase)
        except OSError as error:
            raise storage_error(error, "create the drive") from None

    async def resize(
        self, drive: str, tier: str, size: int, master_key: bytes | None, kept: int
    ) -> None:
        files = self.files_of(drive, tier)
        try:
            await asyncio.to_thread(files.resize, drive, size, master_key, kept)
        except OSError as error:
            raise storage_error(error, "resize the drive") from None

    async def destroy(self, drive: str, tier: str) -> None:
        # Inline: one unlink, and a destroy must work on a full disk (no thread to start).
        self.files_of(drive, tier).destroy(drive)

    def open_read(
        self, drive_bytes: DriveBytes, offset: int, count: int, on_close: ReadClosed
    ) -> ReadPlan:
        with Reverter() as revert:
            revert.add(on_close)
            drive = drive_bytes.drive
            opened = self.files_of(drive, drive_bytes.tier).open(drive, drive_bytes.master_key)
            revert.success()
        return ReadPlan(drive, opened, offset, count, on_close)

    def open_write(
        self,
        drive_bytes: DriveBytes,
        offset: int,
        size: int,
        staged: bool,
        on_close: WriteClosed,
        decoder: BodyDecoder | None = None,
    ) -> DriveWriter | StagedDriveWriter:
        drive, files = drive_bytes.drive, self.files_of(drive_bytes.drive, drive_bytes.tier)
        with Reverter() as revert:
            revert.add(functools.partial(on_close, None))
            opened = files.open(drive, drive_bytes.master_key)
            revert.success()
        if staged:
            stage = WriteStage(opened.io, files.root, offset)
            return StagedDriveWriter(drive, opened, stage, size - offset, on_close, decoder)
        return DriveWriter(drive, opened, offset, size, on_close)

    async def list_files(self, after: str, limit: int = FILES_PAGE) -> list[DriveFile]:
        return await asyncio.to_thread(self._list_files, after, limit)

    def _list_files(self, after: str, limit: int) -> list[DriveFile]:
        # Tiers sharing a directory list its files once, under the first tier's name.
        tier_of: dict[Path, str] = {}
        for name in self.tiers.names:
            tier_of.setdefault(self.tiers.of(name).root, name)
        pages = [
            DriveFile(uuid, tier_of[files.root], size, age)
            for files in self.tiers.directories()
            for uuid, size, age in files.listing(after, limit)
        ]
        return heapq.nsmallest(limit, pages, key=lambda file: file.drive)

    async def remove_orphan(self, drive: str, tier: str, age: float) -> bool:
        return self.files_of(drive, tier).destroy_if_unchanged(drive, age)

    async def close(self) -> None:
        """Nothing held between requests."""
