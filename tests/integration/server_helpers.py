"""Helpers for tests that run servers through the API on real QEMU."""

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.build_guest import BOOT_MARKER, READY_MARKER
from testbed.serial_console import wait_for_log
from tests.api.drive_helpers import create_drive

BOOT_TIMEOUT = 90  # TCG; two VMs on two cores take twice as long


async def upload_guest(
    client: TestClient, auth: dict[str, str], image: Path, cipher: str = "none"
) -> str:
    """A drive of the user's holding the tiny guest, written through the API."""
    data = image.read_bytes()
    drive = (await create_drive(client, auth, len(data), cipher))["drive"]
    response = await client.post(f"/drives/{drive}/write", data=data, headers=auth)
    assert response.status == 204, await response.text()
    return drive


async def create_server(
    client: TestClient, auth: dict[str, str], body: str, stopped: bool = False
) -> dict[str, str]:
    path = "/servers/create/stopped" if stopped else "/servers/create"
    response = await client.post(path, data=body, headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


async def server_info(client: TestClient, auth: dict[str, str], server: str) -> dict[str, str]:
    response = await client.get(f"/servers/{server}/info", headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


def qemu_driver(platform: Platform) -> QemuDriver:
    """The platform's hypervisor driver, QEMU's: for what only a real VM shows."""
    driver = platform.servers.lifecycle.driver
    assert isinstance(driver, QemuDriver)
    return driver


def serial_log(platform: Platform, server: str) -> Path:
    return platform.servers.run_dir(server) / "serial.log"


async def wait_booted(platform: Platform, server: str, count: int = 1) -> str:
    return await wait_for_log(
        serial_log(platform, server), BOOT_MARKER, count=count, timeout=BOOT_TIMEOUT
    )


async def wait_ready(platform: Platform, server: str, count: int = 1) -> str:
    """Wait until the guest's init is done: acpid listens for the power button from then."""
    return await wait_for_log(
        serial_log(platform, server), READY_MARKER, count=count, timeout=BOOT_TIMEOUT
    )


async def wait_status(
    client: TestClient, auth: dict[str, str], server: str, status: str, timeout: float = 30
) -> dict[str, str] | None:
    """Wait until the server's status is `status`; None when the server is gone (404)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/servers/{server}/info", headers=auth)
        if response.status == 404:
            return None
        info = parse_properties(await response.text())
        if info["status"] == status:
            return info
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"server {server} is {info['status']}, not {status}")
        await asyncio.sleep(0.2)
