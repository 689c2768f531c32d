"""Resource rules that need active servers, in user-mode networking on real QEMU: a static IP
is held by one active server at a time and cannot be destroyed meanwhile, MACs are unique on
a network, and in user mode the guest is given the address `nic:0:dhcp` shows."""

from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.build_guest import LEASE_MARKER
from testbed.serial_console import wait_for_matches
from tests.integration.server_helpers import (
    BOOT_TIMEOUT,
    create_server,
    serial_log,
    upload_guest,
    wait_status,
)

# No drive: QEMU runs (the firmware finds nothing to boot), which is all these rules need.
DISKLESS = "name s\ncpu 500\nmem 64\nnic:0:model e1000\n"


async def status_and_error(
    client: TestClient, path: str, auth: dict[str, str], body: str = ""
) -> tuple[int, str | None]:
    response = await client.post(path, data=body, headers=auth)
    await response.read()
    return response.status, response.headers.get("X-Elastic-Error")


async def test_a_static_ip_is_held_by_one_active_server_and_is_busy_meanwhile(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    ip = parse_properties(await (await client.post("/resources/ip/create", headers=auth)).text())
    address = ip["resource"]
    first = await create_server(client, auth, DISKLESS + f"nic:0:dhcp {address}\n")
    assert first["nic:0:dhcp"] == first["nic:0:dhcp:ip"] == address
    second = await create_server(client, auth, DISKLESS + f"nic:0:dhcp {address}\n", stopped=True)
    start = f"/servers/{second['server']}/start"
    assert await status_and_error(client, start, auth) == (409, "busy")
    destroy_ip = f"/resources/ip/{address}/destroy"
    assert await status_and_error(client, destroy_ip, auth) == (409, "busy")
    # Released when the holder stops (a non-persistent server is destroyed then).
    assert await status_and_error(client, f"/servers/{first['server']}/stop", auth) == (204, None)
    assert await wait_status(client, auth, first["server"], "stopped") is None
    assert await status_and_error(client, start, auth) == (204, None)
    await client.post(f"/servers/{second['server']}/stop", headers=auth)
    assert await wait_status(client, auth, second["server"], "stopped") is None
    assert await status_and_error(client, destroy_ip, auth) == (204, None)


async def test_two_active_servers_cannot_share_a_mac_on_one_network(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    body = DISKLESS + "nic:0:mac 52:54:00:aa:bb:cc\nnic:0:dhcp auto\n"
    await create_server(client, auth, body)
    refused = await client.post("/servers/create", data=body, headers=auth)
    assert refused.status == 409 and refused.headers["X-Elastic-Error"] == "busy"
    assert "52:54:00:aa:bb:cc" in await refused.text()
    # The refused create left nothing behind: no server, no held address or MAC.
    assert len((await (await client.get("/servers/list", headers=auth)).text()).splitlines()) == 1


async def test_user_mode_gives_the_guest_its_static_ip_and_auto_takes_no_pool_address(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    auto = await create_server(client, auth, DISKLESS + "nic:0:dhcp auto\n")
    assert auto["nic:0:dhcp:ip"] == "10.0.2.15"
    ip = parse_properties(await (await client.post("/resources/ip/create", headers=auth)).text())
    assert ip["resource"] == "192.0.2.10"  # the first of the pool: `auto` took none
    drive = await upload_guest(client, auth, tiny_guest_image)
    server = await create_server(
        client, auth,
        f"name g\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\n"
        f"nic:0:model virtio\nnic:0:dhcp {ip['resource']}\n",
    )  # fmt: skip
    assert server["nic:0:dhcp:ip"] == ip["resource"]
    leases = await wait_for_matches(
        serial_log(platform, server["server"]),
        rf"{LEASE_MARKER} \S+ \S+ ([0-9.]+)",
        timeout=BOOT_TIMEOUT,
    )
    assert leases[0].group(1) == ip["resource"]
