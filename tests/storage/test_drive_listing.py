"""A host's drive files listed a page at a time in UUID order (`LocalDriveStorage.list_files`,
what an agent answers to `POST /storage/files`), and an orphan's removal that keeps a file
modified since its age limit; the listing call's line checked as the agent reads it."""

import os
import time
import uuid
from pathlib import Path

import pytest

from openhosting.errors import UsageError
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.storage_calls import FilesCall


async def test_pages_in_uuid_order_cover_every_tier_once(tmp_path: Path) -> None:
    tiers = DriveTiers(
        {"disk": tmp_path / "disk", "ssd": tmp_path / "disk", "nvme": tmp_path / "nvme"}
    )
    storage = LocalDriveStorage(tiers)
    made = {}
    for index in range(7):
        drive, tier = str(uuid.uuid4()), ("disk", "nvme")[index % 2]
        await storage.create(drive, tier, 4096 * (index + 1), None)
        made[drive] = (tier, 4096 * (index + 1))
    (tmp_path / "disk" / "not-a-drive.img").write_bytes(b"")
    (tmp_path / "disk" / f"{uuid.uuid4()}.img.staging").write_bytes(b"")
    seen, after = [], ""
    while True:
        page = await storage.list_files(after, 3)
        assert len(page) <= 3
        seen += page
        if len(page) < 3:
            break
        after = page[-1].drive
    assert [file.drive for file in seen] == sorted(made)
    assert {file.drive: (file.tier, file.size) for file in seen} == made
    assert all(0 <= file.age < 60 for file in seen)


async def test_an_orphan_is_removed_only_once_unmodified_for_its_age(tmp_path: Path) -> None:
    storage = LocalDriveStorage(DriveTiers({"disk": tmp_path}))
    drive = str(uuid.uuid4())
    await storage.create(drive, "disk", 4096, None)
    assert not await storage.remove_orphan(drive, "disk", 600)  # just made
    then = time.time() - 700
    os.utime(tmp_path / f"{drive}.img", (then, then))
    assert await storage.remove_orphan(drive, "disk", 600)
    assert not (tmp_path / f"{drive}.img").exists()
    assert not await storage.remove_orphan(drive, "disk", 600)  # already gone


@pytest.mark.parametrize(
    "line",
    [b"[]", b'{"limit": 0}', b'{"limit": 10001}', b'{"after": "../x", "limit": 5}', b"{"],
)
def test_a_malformed_listing_call_is_a_usage_error(line: bytes) -> None:
    with pytest.raises(UsageError):
        FilesCall.decode(line)


def test_a_listing_call_decodes() -> None:
    drive = str(uuid.uuid4())
    assert FilesCall.decode(b'{"after": "%s", "limit": 5}' % drive.encode()) == FilesCall(drive, 5)
    assert FilesCall.decode(b'{"limit": 1}') == FilesCall("", 1)
