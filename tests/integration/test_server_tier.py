"""A server on real QEMU boots from a drive of a tier with its own directory: QEMU opens the
drive's file where its tier keeps it (an encrypted one with its passphrase), and what the
guest writes is in that file, read back through the API."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.platform import Platform
from testbed.serial_console import SerialConsole
from tests.api.drive_helpers import create_drive, read_bytes
from tests.api.imaging_helpers import write
from tests.conftest import config_with_tiers
from tests.integration.server_helpers import create_server, wait_ready, wait_status

MARKER = b"OH-TIER-MARKER"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_with_tiers(tmp_path, "ssd")


async def test_a_guest_boots_from_and_writes_to_a_drive_in_its_tiers_directory(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None, tmp_path: Path,
) -> None:  # fmt: skip
    guest = tiny_guest_image.read_bytes()
    # One MiB more than the guest image: room for the guest's marker past its partition.
    size = len(guest) + (1 << 20)
    drive = (await create_drive(client, auth, size, "aes-xts-plain", tier="ssd"))["drive"]
    await write(client, auth, drive, 0, guest)
    assert [path.name for path in (tmp_path / "ssd").iterdir()] == [f"{drive}.img"]
    assert list((tmp_path / "state" / "drives").glob("*.img")) == []

    body = f"name tiered\ncpu 2000\nmem 256\npersistent true\nide:0:0 {drive}\nboot ide:0:0"
    server = (await create_server(client, auth, body))["server"]
    await wait_ready(platform, server)
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        sector = len(guest) // 512
        await console.run(
            f"printf {MARKER.decode()} | dd of=/dev/sda bs=512 seek={sector} conv=fsync; sync"
        )
    finally:
        await console.close()
    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204, await response.text()
    assert await wait_status(client, auth, server, "stopped") is not None

    read = await read_bytes(client, auth, f"/drives/{drive}/read/{len(guest)}/{len(MARKER)}")
    assert read == MARKER
