"""Of its host, a bridge-mode guest reaches no service on any of the host's addresses: the
fence (network/bridge_fence.py) refuses it all but DHCP, VNC and ping. The host's address on
the bridge is tried in tests/integration/test_bridge_networking.py; here its IPv6 link-local
address, an address such as a cloud's metadata service, and DNS. One TCG guest in a
namespace this test creates; traffic stays inside it."""

import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.services.servers.server_network import default_mac
from tests.integration.bridge_platform import (  # noqa: F401 (fixtures, by their names)
    bridge_config_fixture,
    bridge_platform_fixture,
    namespace_fixture,
)
from tests.integration.netns_helpers import answer_from
from tests.integration.server_helpers import create_server, upload_guest, wait_ready
from tests.integration.test_bridge_networking import console_run, leases, post, public_peer

# A host service on every address, IPv4 and IPv6 (an API bound to `::`, say): it says BANNER.
BANNER_SERVER = """\
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"HOST!\\n")
    c.close()
"""
SERVICE_PORT = 8081
METADATA = "169.254.169.254"  # where clouds serve instance metadata: a host address here


def host_link_local(namespace: str, link: str) -> str:
    done = subprocess.run(
        ["ip", "-n", namespace, "-6", "-o", "addr", "show", "dev", link, "scope", "link"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout.split()[3].split("/")[0]


async def test_a_guest_reaches_no_host_service_on_its_link_local_or_metadata_address(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    """Addresses a peer on the bridge does reach the service on (without the fence, the
    guest too)."""
    platform = bridge_platform
    drive = await upload_guest(client, auth, tiny_guest_image)
    info = await create_server(
        client, auth,
        f"name g\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\n",
    )  # fmt: skip
    server, mac = info["server"], default_mac(info["server"], 0)
    public = "oh-public"
    subprocess.run(["ip", "-n", namespace, "addr", "add", f"{METADATA}/32", "dev", public],
                   check=True, timeout=10)  # fmt: skip
    service = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", BANNER_SERVER,
         str(SERVICE_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with public_peer(namespace) as peer:
            link_local = host_link_local(namespace, public)
            await leases(platform, server)
            await wait_ready(platform, server)
            # The service answers on both addresses, to a machine that is no guest.
            subprocess.run(["ip", "-n", peer, "route", "add", METADATA, "dev", "ohpeer0"],
                           check=True, timeout=10)  # fmt: skip
            assert answer_from(peer, "tcp", METADATA, SERVICE_PORT, 5) == "HOST!"
            assert answer_from(peer, "tcp", f"{link_local}%ohpeer0", SERVICE_PORT, 5) == "HOST!"

            nic = f"$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)"
            await console_run(platform, server, f"export NIC={nic}; echo $NIC")
            await console_run(platform, server, f"route add -host {METADATA} dev $NIC")
            probe = "nc -w 4 {} " + str(SERVICE_PORT) + " </dev/null 2>&1; echo rc=$?"
            for target in (METADATA, f"{link_local}%$NIC"):
                answered = await console_run(platform, server, probe.format(target))
                # (Without the fence both answer HOST!.)
                assert "HOST!" not in answered and "refused" in answered, (target, answered)
            # Nor does DNS answer on the host: dnsmasq serves DHCP only (--port=0).
            host = platform.servers.networks.driver.vnc_address
            looked_up = await console_run(platform, server, f"nslookup example.org {host}")
            assert "no servers could be reached" in looked_up, looked_up
    finally:
        service.kill()
        service.wait(timeout=10)
    await post(client, auth, f"/servers/{server}/destroy")
