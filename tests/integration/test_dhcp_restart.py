"""Bridge mode's dnsmasq SIGKILLed while a guest runs (issue 19, the crash campaign's DHCP
part): the daemon's watch starts it again within seconds, and the running guest renews its
lease (the same address) from the new one. Before, nothing started it again until the next
server started, and a running guest's renewals went unanswered until its lease ran out.
One TCG guest in a namespace this test creates."""

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from testbed.build_guest import LEASE_MARKER
from testbed.serial_console import SerialConsole, wait_for_log, wait_for_matches
from tests.integration.bridge_platform import (  # noqa: F401 (fixtures, by their names)
    bridge_config_fixture,
    bridge_platform_fixture,
    namespace_fixture,
)
from tests.integration.server_helpers import (
    BOOT_TIMEOUT,
    create_server,
    serial_log,
    upload_guest,
    wait_ready,
)

WATCH_INTERVAL = 0.5
RESTART_TIMEOUT = 10.0
RENEW_TIMEOUT = 30.0


async def test_a_killed_dnsmasq_is_started_again_and_a_running_guest_renews_its_lease(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    platform = bridge_platform
    drive = await upload_guest(client, auth, tiny_guest_image)
    server = (await create_server(
        client, auth,
        f"name g\ncpu 2000\nmem 128\nide:0:0 {drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\n",
    ))  # fmt: skip
    uuid, address = server["server"], server["nic:0:dhcp:ip"]
    log = serial_log(platform, uuid)
    await wait_for_log(log, f"{LEASE_MARKER} ", timeout=BOOT_TIMEOUT)
    await wait_ready(platform, uuid)

    dhcp = platform.servers.networks.driver.dhcp  # type: ignore[attr-defined]
    killed = dhcp.pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    # The daemon runs this watch (daemon.py); here, faster.
    watch = asyncio.create_task(
        platform.servers.networks.keep_helpers_running_every(WATCH_INTERVAL)
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTART_TIMEOUT
        while (pid := dhcp.pid()) is None or pid == killed:
            assert loop.time() < deadline, "dnsmasq was not started again"
            await asyncio.sleep(0.2)
        console = await SerialConsole.open(platform.servers.run_dir(uuid) / "console.sock")
        try:
            await console.run("kill -USR1 $(pidof udhcpc)")  # renew now, not at half-lease
        finally:
            await console.close()
        renewed = await wait_for_matches(
            log, rf"{LEASE_MARKER} \S+ \S+ ([0-9.]+)", count=2, timeout=RENEW_TIMEOUT
        )
        assert [lease.group(1) for lease in renewed] == [address, address]
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
