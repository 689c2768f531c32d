"""A host disk that fails under a running VM (EIO, not a full disk): QEMU reports the error to
the guest as its disk's error (`rerror=report`, and `werror=enospc` pauses only for ENOSPC),
as libvirt's and QEMU's defaults do: a failing disk is the guest's to see, a full one is the
platform's to fix. The server stays `active`, the daemon names the error in its log, and once
the disk heals the guest's next writes reach the drive. Real QEMU (TCG), one tiny guest, its
data drive on `faultfs` (a FUSE passthrough compiled for the test: no device-mapper here)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from bench.reliability import faultfs

from openhosting.config import Config
from openhosting.services.platform import Platform
from testbed.serial_console import SerialConsole, wait_for_log
from tests.api.drive_helpers import create_drive, read_bytes
from tests.conftest import config_in
from tests.integration.server_helpers import (
    create_server,
    serial_log,
    server_info,
    upload_guest,
    wait_ready,
)

MIB = 1 << 20
DATA_SIZE = 8 * MIB
WRITTEN = 1 * MIB
PATTERN = b"OHHEAL\n"


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[faultfs.FaultFs]:
    if os.geteuid() != 0:
        pytest.skip("mounting a FUSE file system for the daemon needs root")
    reason = faultfs.unavailable_reason()
    assert reason is None, f"{reason} (scripts/install-system-packages installs it)"
    binary = faultfs.build(tmp_path)
    with faultfs.FaultFs(binary, tmp_path / "backing", tmp_path / "drives") as mounted:
        try:
            yield mounted
        finally:
            mounted.set_mode("ok")


@pytest.fixture
def config(tmp_path: Path, faulty: faultfs.FaultFs) -> Config:
    """The shared `config`, with a tier `failing` on the failing disk: the boot drive stays
    on a healthy one, as a guest's root would while its data disk fails."""
    return config_in(tmp_path, storage={"tiers": f"failing={faulty.mount_point}"})


async def test_eio_under_a_running_guest_is_the_guests_disk_error_and_healing_lets_it_write(
    client: TestClient,
    auth: dict[str, str],
    platform: Platform,
    tiny_guest_image: Path,
    faulty: faultfs.FaultFs,
    servers_cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    boot = await upload_guest(client, auth, tiny_guest_image)
    data = (await create_drive(client, auth, DATA_SIZE, "none", tier="failing"))["drive"]
    created = await create_server(
        client, auth,
        f"name eio\ncpu 2000\nmem 256\npersistent true\nide:0:0 {boot}\nboot ide:0:0\n"
        f"block:0 {data}\n",
    )  # fmt: skip
    server = created["server"]
    await wait_ready(platform, server)
    log = serial_log(platform, server)
    # The data drive is the only virtio disk: /dev/vda; dd's fsync makes its status tell
    # whether the write reached the disk. Quotes split the mark in the typed line.
    write = f"yes OHHEAL | head -c {WRITTEN} | dd of=/dev/vda bs=65536 conv=fsync 2>/dev/null"

    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        faulty.set_mode("write")
        await console.send(f'{write}; echo FAILED-$?-"E"ND')
        text = await wait_for_log(log, "-END", timeout=60)
        # The guest saw its disk fail, as a real disk's: the kernel's error and dd's status.
        assert "I/O error, dev vda" in text
        assert "FAILED-0-END" not in text
        info = await server_info(client, auth, server)
        assert info["status"] == "active", info  # not paused: nothing for the platform to do
        # The operator hears of the host's failing disk (counted, not a line per error).
        named = [r.getMessage() for r in caplog.records if "event=vm_io_error" in r.getMessage()]
        assert named and "action=report" in named[0] and "count=1" in named[0], named

        faulty.set_mode("ok")
        await console.send(f'{write}; echo HEALED-$?-"E"ND')
        text = await wait_for_log(log, "-END", count=2, timeout=60)
        assert "HEALED-0-END" in text
    finally:
        await console.close()

    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204
    stored = await read_bytes(client, auth, f"/drives/{data}/read")
    expected = (PATTERN * (WRITTEN // len(PATTERN) + 1))[:WRITTEN]
    assert stored[:WRITTEN] == expected
