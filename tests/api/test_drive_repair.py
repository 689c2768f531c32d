"""What a daemon that stopped half-way left in the drive directory is put right when the next
one starts (`Drives.repair_files`): files resized to what their rows say, files without a row
removed once they have been left alone a while."""

import os
import ssl
import time
import uuid

import pytest
from aiohttp.test_utils import TestClient

from openhosting.agent.host_connection import HostConnection
from openhosting.services.drives.drive_repair import ORPHAN_GRACE_SECONDS
from openhosting.services.platform import Platform
from openhosting.storage.remote_storage import RemoteDriveStorage
from openhosting.store import drives as drive_store
from tests.api.drive_helpers import create_drive, read_bytes

CIPHERS = ["none", "aes-xts-plain"]
SIZE = 64 * 1024


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_drive_files_a_stopped_daemon_left_mid_resize_are_put_right(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    payload = os.urandom(SIZE)
    shrunk, grown = [(await create_drive(client, auth, SIZE, cipher))["drive"] for _ in "ab"]
    for drive in (shrunk, grown):
        await client.post(f"/drives/{drive}/write", data=payload, headers=auth)
    # The rows say what `set` answered; the daemon died before the files followed.
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, shrunk, size=1000)
        drive_store.update_drive(connection, grown, size=3 * SIZE)
    assert platform.drives.repair_files() == (2, 0)
    assert platform.drives.repair_files() == (0, 0)
    assert await read_bytes(client, auth, f"/drives/{shrunk}/read") == payload[:1000]
    assert await read_bytes(client, auth, f"/drives/{grown}/read") == payload + bytes(2 * SIZE)
    # What the shrink cut is gone: growing again shows zeros.
    await client.post(f"/drives/{shrunk}/set", data=f"size {SIZE}", headers=auth)
    expected = payload[:1000] + bytes(SIZE - 1000)
    assert await read_bytes(client, auth, f"/drives/{shrunk}/read") == expected


async def test_files_without_a_row_are_removed_once_left_alone_a_while(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    kept = (await create_drive(client, auth, SIZE))["drive"]
    root = platform.drives.files.root
    long_ago = time.time() - ORPHAN_GRACE_SECONDS - 60
    old_orphan, new_orphan = root / f"{uuid.uuid4()}.img", root / f"{uuid.uuid4()}.img"
    not_a_drive = root / "notes.img"
    for path in (old_orphan, new_orphan, not_a_drive):
        path.write_bytes(b"left behind")
    for path in (old_orphan, not_a_drive, platform.drives.files.path_of(kept)):
        os.utime(path, (long_ago, long_ago))
    assert platform.drives.repair_files() == (0, 1)
    assert not old_orphan.exists()
    assert new_orphan.exists()  # its row may be about to come (`standard add`)
    assert not_a_drive.exists()  # not a drive file: not ours to remove
    assert await read_bytes(client, auth, f"/drives/{kept}/read") == bytes(SIZE)


async def test_a_drive_of_an_agents_host_is_neither_resized_nor_removed_here(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    """Its bytes are its agent's; a file of it here (from before drives were streamed to the
    agents) is not an orphan, and its size is not this host's to fix."""
    platform.hosts.set_agent("hv-a", "127.0.0.1:7430")
    agents = platform.drives.storages
    agents.connector = lambda host, address: RemoteDriveStorage(
        HostConnection(host, address, ssl.create_default_context())
    )
    drive = (await create_drive(client, auth, SIZE, "none"))["drive"]
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, drive, host="hv-a", size=2 * SIZE)
    path = platform.drives.files.path_of(drive)
    long_ago = time.time() - ORPHAN_GRACE_SECONDS - 60
    os.utime(path, (long_ago, long_ago))
    assert platform.drives.repair_files() == (0, 0)
    assert path.stat().st_size == SIZE
