"""`nic:0:dhcp` unset means no address is offered (docs/api.md §5), in user mode too: the
NIC's real passt runs with its DHCP server off. Real QEMU (TCG) and passt; the servers have no
drives, so nothing boots."""

from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from tests.integration.server_helpers import create_server


def passt_cmdline(platform: Platform, server: str) -> list[str]:
    pidfile = platform.config.run_path / "network" / "passt" / f"{server}-0.pid"
    pid = int(pidfile.read_text().split()[0])
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_a_nic_without_nic_dhcp_gets_no_dhcp_offer_in_user_mode(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    assert platform.servers.networks.driver.mode == "user"
    # One VM at a time: each stopped before the next starts.
    silent = await create_server(client, auth, "name s\ncpu 500\nmem 64\nnic:0:model e1000")
    assert "nic:0:dhcp" not in silent and "nic:0:dhcp:ip" not in silent
    assert "--no-dhcp" in passt_cmdline(platform, silent["server"])
    await stop(client, auth, silent["server"])

    offered = await create_server(
        client, auth, "name o\ncpu 500\nmem 64\nnic:0:model e1000\nnic:0:dhcp auto"
    )
    assert offered["nic:0:dhcp"] == "10.0.2.15"
    assert "--no-dhcp" not in passt_cmdline(platform, offered["server"])
    await stop(client, auth, offered["server"])


async def stop(client: TestClient, auth: dict[str, str], server: str) -> None:
    response = await client.post(f"/servers/{server}/stop", headers=auth)
    assert response.status == 204
