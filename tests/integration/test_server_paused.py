"""`paused` is QEMU's word, not a guess (docs/api.md §5): a VM that QEMU stops shows `paused`,
and runs again by itself or on `start`. Real QEMU (TCG), one tiny guest at a time.

The full-disk case: the drive directory is a small tmpfs mounted for the test (root only). The
guest writes a known pattern to its data drive until the host's file system is full; QEMU
pauses it (werror=enospc) holding the write; once the platform frees space it resumes by
itself and finishes the write, and the drive holds every byte the guest wrote."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.hypervisor.space_resume import free_bytes
from openhosting.services.platform import Platform
from testbed.serial_console import SerialConsole, wait_for_log
from tests.api.drive_helpers import create_drive, read_bytes
from tests.api.tmpfs_helpers import small_tmpfs
from tests.conftest import config_in
from tests.integration.server_helpers import (
    BOOT_TIMEOUT,
    create_server,
    qemu_driver,
    serial_log,
    server_info,
    upload_guest,
    wait_ready,
    wait_status,
)

MIB = 1 << 20
TMPFS_SIZE = 64 * MIB
DATA_SIZE = 32 * MIB
WRITTEN = 4 * MIB  # by the guest, of which only ROOM fits before the disk is full
ROOM = 1 * MIB
PATTERN = b"OHDATA\n"


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Config]:
    """The shared `config`; for the full-disk test with drives on a small tmpfs."""
    if "full" not in request.node.name:
        yield config_in(tmp_path)
        return
    with small_tmpfs(tmp_path / "small", TMPFS_SIZE) as drive_dir:
        yield config_in(tmp_path, storage={"drive_dir": str(drive_dir)})


def status_events(platform: Platform, user: str, server: str) -> list[tuple[object, object]]:
    subscription = platform.events.subscribe(user, after=0)
    try:
        return [
            (event.fields.get("status"), event.fields.get("reason"))
            for event in subscription.pending()
            if event.object == server and event.change == "status"
        ]
    finally:
        subscription.close()


async def test_a_vm_stopped_by_qemu_is_paused_and_start_runs_it_again(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    created = await create_server(client, auth, "name p\ncpu 500\nmem 64\npersistent true")
    server = created["server"]
    vm = qemu_driver(platform).vm(server)

    await vm.monitor.execute("stop")  # as an operator's monitor would
    info = await wait_status(client, auth, server, "paused", timeout=10)
    assert info is not None and "started" in info

    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert response.status == 204, await response.text()
    assert (await server_info(client, auth, server))["status"] == "active"
    assert await vm.monitor.query_status() == "running"
    # Running again, `start` is refused as before.
    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert response.status == 409
    assert status_events(platform, created["user"], server)[-2:] == [
        ("paused", "paused"),
        ("active", "resumed"),
    ]
    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204


async def test_a_full_disk_pauses_the_guest_which_resumes_with_its_writes_once_room_is_made(
    client: TestClient,
    auth: dict[str, str],
    platform: Platform,
    tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:
    boot = await upload_guest(client, auth, tiny_guest_image)
    data = (await create_drive(client, auth, DATA_SIZE, "none"))["drive"]
    created = await create_server(
        client, auth,
        f"name full\ncpu 2000\nmem 256\npersistent true\nide:0:0 {boot}\nboot ide:0:0\n"
        f"block:0 {data}\n",
    )  # fmt: skip
    server = created["server"]
    await wait_ready(platform, server)

    # The platform's storage all but full: ROOM left for the guest's writes.
    drive_dir = platform.drives.files.root
    filler = drive_dir / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free_bytes(drive_dir) - ROOM)
    finally:
        os.close(fd)

    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        # The data drive is the only virtio disk: /dev/vda. The echo ends after the write
        # (quotes split its mark in the echo of the typed line).
        await console.send(
            f"yes OHDATA | head -c {WRITTEN} | dd of=/dev/vda bs=65536 conv=fsync 2>/dev/null;"
            ' echo WROTE-$?-"E"ND'
        )
        await wait_status(client, auth, server, "paused", timeout=60)
        filler.unlink()  # the platform frees space: the VM resumes by itself
        await wait_status(client, auth, server, "active", timeout=30)
        log = await wait_for_log(serial_log(platform, server), "-END", timeout=BOOT_TIMEOUT)
        assert "WROTE-0-END" in log
    finally:
        await console.close()
    assert ("paused", "nospace") in status_events(platform, created["user"], server)

    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204
    stored = await read_bytes(client, auth, f"/drives/{data}/read")
    expected = (PATTERN * (WRITTEN // len(PATTERN) + 1))[:WRITTEN]
    assert stored[:WRITTEN] == expected
    assert stored[WRITTEN:] == bytes(DATA_SIZE - WRITTEN)
