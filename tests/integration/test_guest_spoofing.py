"""A bridge-mode guest sends on the public bridge only as itself (network/spoof_guard.py): not
from an address that is not its own, not from another MAC, and its ARP cannot claim another
machine's address. One TCG guest in a namespace this test creates, beside a peer on the
public bridge standing for another tenant's machine; traffic stays inside them."""

import asyncio
import subprocess
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.network.spoof_guard import link_local
from openhosting.services.platform import Platform
from openhosting.services.servers.server_network import default_mac
from tests.integration.bridge_platform import (  # noqa: F401 (fixtures, by their names)
    bridge_config_fixture,
    bridge_platform_fixture,
    namespace_fixture,
)
from tests.integration.netns_helpers import neighbour
from tests.integration.server_helpers import create_server, upload_guest, wait_ready
from tests.integration.test_bridge_networking import (
    console_run,
    leases,
    pings,
    post,
    public_peer,
)

PEER = "192.0.2.250"  # public_peer's address
# In the guest's shell: wait (10 s at most) until the NIC set up again says it is up.
LINK_UP = (
    "i=0; while [ $(cat /sys/class/net/$NIC/operstate) != up ] && [ $i -lt 10 ];"
    " do sleep 1; i=$((i+1)); done"
)


async def pings_soon(platform: Platform, server: str, address: str) -> bool:
    """`pings`, tried three times: the first frames after a NIC comes up may be lost."""
    for _ in range(3):
        if await pings(platform, server, address):
            return True
    return False


def host_pings(namespace: str, address: str) -> bool:
    ping = ["ip", "netns", "exec", namespace, "busybox", "ping", "-c", "1", "-W", "2", address]
    return subprocess.run(ping, timeout=10, capture_output=True, check=False).returncode == 0


def mac_of(namespace: str, link: str) -> str:
    done = subprocess.run(
        ["ip", "-n", namespace, "-br", "link", "show", link],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout.split()[2]


async def test_a_guest_cannot_send_as_another_address_or_mac_nor_claim_one_in_arp(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    platform = bridge_platform
    drive = await upload_guest(client, auth, tiny_guest_image)
    info = await create_server(
        client, auth,
        f"name g\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\n",
    )  # fmt: skip
    server, own = info["server"], info["nic:0:dhcp:ip"]
    mac = default_mac(server, 0)
    with public_peer(namespace) as peer:
        assert await leases(platform, server) == {mac: own}
        await wait_ready(platform, server)
        nic = f"$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)"
        await console_run(platform, server, f"export NIC={nic}; echo $NIC")
        assert await pings_soon(platform, server, PEER)  # as itself: through
        # Over IPv6 as itself too: from the link-local address its kernel makes of its MAC.
        assert link_local(mac) in await console_run(platform, server, "ip -6 addr show dev $NIC")
        assert await pings_soon(platform, server, f"{link_local(mac_of(peer, 'ohpeer0'))}%$NIC")

        # From an address of the pool that is not its own (another tenant's, say).
        await console_run(platform, server, "ifconfig $NIC 192.0.2.251 netmask 255.255.255.0")
        assert not await pings(platform, server, PEER)
        await console_run(platform, server, f"ifconfig $NIC {own} netmask 255.255.255.0")
        assert await pings_soon(platform, server, PEER)

        # An ARP claiming the peer's address does not move the host's entry for it.
        assert host_pings(namespace, PEER)
        await asyncio.sleep(1.5)  # past the neighbour table's locktime (1 s)
        # (The guest takes the address itself: arping sends from an address of its own.)
        claim = (
            f"ifconfig $NIC {PEER} netmask 255.255.255.0; arping -U -c 2 -I $NIC {PEER};"
            f" arping -A -c 2 -I $NIC {PEER}; ifconfig $NIC {own} netmask 255.255.255.0"
        )
        claimed = await console_run(platform, server, claim)
        assert "Sent 2 probe" in claimed or "Sent 2" in claimed, claimed
        assert mac not in neighbour(namespace, PEER), neighbour(namespace, PEER)

        # Sending from the peer's MAC does not steal the peer's frames (nor get answers).
        peer_mac = mac_of(peer, "ohpeer0")
        assert host_pings(namespace, PEER)
        forge = (
            f"ifconfig $NIC down; ifconfig $NIC hw ether {{}}; ifconfig $NIC {own} up; {LINK_UP}"
        )
        await console_run(platform, server, forge.format(peer_mac))
        host = platform.servers.networks.driver.vnc_address  # on the public bridge
        assert host is not None and not await pings(platform, server, host)
        assert host_pings(namespace, PEER)  # still the peer's
        await console_run(platform, server, forge.format(mac))
        assert await pings_soon(platform, server, PEER)
    await post(client, auth, f"/servers/{server}/destroy")
