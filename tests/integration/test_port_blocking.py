"""`nic:0:block` on a real TCG guest in bridge mode, in namespaces this test creates: a port
the server blocks is unreachable from a machine on the public network, an open one answers,
and a live `set` changes which is which at once. One guest; traffic stays in the namespaces."""

import subprocess
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.network.nic_firewall import table_name
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.build_guest import LEASE_MARKER
from testbed.serial_console import SerialConsole, wait_for_log
from tests.integration.bridge_platform import (  # noqa: F401 (fixtures, by their names)
    bridge_config_fixture,
    bridge_platform_fixture,
    namespace_fixture,
)
from tests.integration.netns_helpers import answer_from, network_namespace
from tests.integration.server_helpers import (
    BOOT_TIMEOUT,
    create_server,
    serial_log,
    upload_guest,
    wait_ready,
)

PUBLIC_BRIDGE = "oh-public"
PEER = "192.0.2.250"  # a machine on the public network, outside the pool's range
OPEN_TIMEOUT = 5.0  # a TCG guest answers slowly, but well within this


async def test_a_blocked_port_is_unreachable_an_open_one_answers_and_set_changes_it_live(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image)
    info = await create_server(
        client, auth,
        f"name fw\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\nnic:0:block tcp/22 udp/53\n",
    )  # fmt: skip
    server, guest = info["server"], info["nic:0:dhcp:ip"]
    assert info["nic:0:block"] == "tcp/22 udp/53"
    await wait_ready(bridge_platform, server)
    log = serial_log(bridge_platform, server)
    await wait_for_log(log, f"{LEASE_MARKER} eth0", timeout=BOOT_TIMEOUT)  # it has its address
    console = await SerialConsole.open(bridge_platform.servers.run_dir(server) / "console.sock")
    try:
        # The guest serves both ports (busybox nc, one answer per connection, for ever).
        for port in (22, 8080):
            await console.run(f"(nc -ll -p {port} -e echo hello </dev/null >/dev/null 2>&1 &)")
    finally:
        await console.close()

    # The bridge is up once the guest is; a machine on the public network joins it.
    with network_namespace() as peer:
        cable = ["ip", "link", "add", "ohpeer0", "netns", peer, "type", "veth", "peer", "name"]
        subprocess.run([*cable, "ohpeer1", "netns", namespace], check=True, timeout=10)
        subprocess.run(["ip", "-n", namespace, "link", "set", "ohpeer1", "master", PUBLIC_BRIDGE,
                        "up"], check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-n", peer, "addr", "add", f"{PEER}/24", "dev", "ohpeer0"],
                       check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-n", peer, "link", "set", "ohpeer0", "up"], check=True, timeout=10)

        assert answer_from(peer, "tcp", guest, 8080, OPEN_TIMEOUT) == "hello"
        assert answer_from(peer, "tcp", guest, 22) == "TimeoutError"  # dropped, never seen

        # A live set: 22 opens, 8080 closes, at once and without a restart.
        response = await client.post(
            f"/servers/{server}/set", data="nic:0:block tcp/8080", headers=auth
        )
        assert response.status == 200, await response.text()
        changed = parse_properties(await response.text())
        assert (changed["status"], changed["nic:0:block"]) == ("active", "tcp/8080")
        assert answer_from(peer, "tcp", guest, 22, OPEN_TIMEOUT) == "hello"
        assert answer_from(peer, "tcp", guest, 8080) == "TimeoutError"

    # The server's chain goes with its tap.
    assert (await client.post(f"/servers/{server}/destroy", headers=auth)).status == 204
    listed = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "bridge",
         table_name(PUBLIC_BRIDGE)],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert "jump" not in listed
