"""Bridge-mode networking end to end (TCG guests in a namespace this test creates): guests on
the public bridge get the addresses the API shows and reach each other, a static IP resource
is the address its guest gets, VLANs connect their members and nobody else, tap counters move,
and nothing of a server remains after it is gone. Traffic stays inside the namespace."""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.hypervisor import process
from openhosting.network import nic_firewall
from openhosting.network.driver import NicPlan
from openhosting.network.nic_firewall import chain_name
from openhosting.services.platform import Platform, open_platform
from openhosting.services.servers.server_network import default_mac
from openhosting.wire.text import parse_properties
from testbed.build_guest import LEASE_MARKER
from testbed.serial_console import SerialConsole, wait_for_matches
from tests.integration.bridge_platform import (  # noqa: F401 (fixtures, by their names)
    bridge_config_fixture,
    bridge_platform_fixture,
    namespace_fixture,
)
from tests.integration.netns_helpers import link_names, network_namespace
from tests.integration.server_helpers import (
    BOOT_TIMEOUT,
    create_server,
    serial_log,
    server_info,
    upload_guest,
    wait_ready,
    wait_status,
)

PUBLIC_BRIDGE = "oh-public"
LEASE = re.compile(rf"{LEASE_MARKER} (\S+) ([0-9a-f:]{{17}}) ([0-9.]+)")


async def leases(platform: Platform, server: str) -> dict[str, str]:
    """The guest's leases as its serial log shows them: MAC -> address."""
    found = await wait_for_matches(serial_log(platform, server), LEASE, timeout=BOOT_TIMEOUT)
    return {lease.group(2): lease.group(3) for lease in found}


async def console_run(platform: Platform, server: str, command: str) -> str:
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        return await console.run(command, timeout=30)
    finally:
        await console.close()


async def pings(platform: Platform, server: str, address: str) -> bool:
    output = await console_run(platform, server, f"ping -c 2 -W 2 {address}")
    return bool(re.search(r"[1-9]\d* packets received", output))


def driver_plan(platform: Platform, server: str) -> NicPlan:
    [plan] = platform.servers.networks.plans_of(server)
    return plan


def platform_vm_pid(platform: Platform, server: str) -> int:
    pid = process.adopt(platform.servers.run_dir(server), server)
    assert pid is not None
    return pid


async def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert await process.wait_exit(pid, timeout=10)


async def post(client: TestClient, auth: dict[str, str], path: str, body: str = "") -> str:
    response = await client.post(path, data=body, headers=auth)
    assert response.status in (200, 204), (path, await response.text())
    return await response.text()


async def test_guests_on_the_public_bridge_get_the_shown_addresses_and_reach_each_other(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    platform = bridge_platform
    static = parse_properties(await post(client, auth, "/resources/ip/create", "name fixed"))
    address = static["resource"]
    drives = [await upload_guest(client, auth, tiny_guest_image) for _ in range(2)]
    auto = await create_server(
        client, auth,
        f"name auto\ncpu 1000\nmem 256\nide:0:0 {drives[0]}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\nvnc:ip auto\nvnc:password secret\n",
    )  # fmt: skip
    fixed = await create_server(
        client, auth,
        f"name fixed\ncpu 1000\nmem 256\nblock:0 {drives[1]}\nboot block:0\n"
        f"nic:0:model virtio\nnic:0:dhcp {address}\nnic:0:mac 52:54:00:0f:1e:d0\n",
    )  # fmt: skip
    assert fixed["nic:0:dhcp"] == fixed["nic:0:dhcp:ip"] == address
    temporary = auto["nic:0:dhcp:ip"]
    assert auto["nic:0:dhcp"] == temporary and temporary not in ("", address, "10.0.2.15")
    # VNC is reached on the server's own address, port 5900 (see the overlay test below).
    assert auto["vnc:ip"] == temporary and "vnc:port" not in auto

    # The guests get exactly those addresses from dnsmasq.
    assert await leases(platform, fixed["server"]) == {"52:54:00:0f:1e:d0": address}
    auto_mac = default_mac(auto["server"], 0)
    assert await leases(platform, auto["server"]) == {auto_mac: temporary}
    await wait_ready(platform, auto["server"])
    await wait_ready(platform, fixed["server"])

    assert await pings(platform, auto["server"], address)
    assert await pings(platform, fixed["server"], temporary)
    info = await server_info(client, auth, auto["server"])
    assert int(info["rx"]) > 0 and int(info["tx"]) > 0
    assert int(info["rx:packets"]) > 0 and int(info["tx:packets"]) > 0

    # A static IP is held while its server runs: not destroyable, not for a second server.
    busy = await client.post(f"/resources/ip/{address}/destroy", headers=auth)
    assert busy.status == 409 and busy.headers["X-Elastic-Error"] == "busy"

    for server in (auto, fixed):
        await post(client, auth, f"/servers/{server['server']}/destroy")
    assert link_names(namespace) == {"lo", PUBLIC_BRIDGE}  # no tap left
    dhcp = platform.servers.networks.driver.dhcp
    assert dhcp.entries() == {}
    await post(client, auth, f"/resources/ip/{address}/destroy")
    await platform.servers.close()  # the daemon stops with no server running
    assert dhcp.pid() is None
    assert link_names(namespace) == {"lo"}


async def test_vlan_members_reach_each_other_and_no_one_else(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path,
) -> None:  # fmt: skip
    platform = bridge_platform
    vlans = [
        parse_properties(await post(client, auth, "/resources/vlan/create", f"name v{n}"))
        for n in (1, 2)
    ]
    members = [(vlans[0], "10.99.0.1"), (vlans[0], "10.99.0.2"), (vlans[1], "10.99.0.3")]
    servers = []
    for number, (vlan, _address) in enumerate(members):
        drive = await upload_guest(client, auth, tiny_guest_image)
        body = (
            f"name g{number}\ncpu 1000\nmem 128\nide:0:0 {drive}\nboot ide:0:0\n"
            f"nic:1:model rtl8139\nnic:1:vlan {vlan['resource']}\n"
        )
        servers.append((await create_server(client, auth, body))["server"])
    # A VLAN in use by an active server cannot be destroyed.
    busy = await client.post(f"/resources/vlan/{vlans[1]['resource']}/destroy", headers=auth)
    assert busy.status == 409 and busy.headers["X-Elastic-Error"] == "busy"

    for server, (_vlan, address) in zip(servers, members, strict=True):
        await wait_ready(platform, server)
        mac = default_mac(server, 1)
        # NIC names follow driver load order: find the VLAN NIC by its MAC.
        iface = f"$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)"
        await console_run(platform, server, f"ifconfig {iface} {address} netmask 255.255.255.0")

    assert await pings(platform, servers[0], "10.99.0.2")
    assert await pings(platform, servers[1], "10.99.0.1")
    assert not await pings(platform, servers[2], "10.99.0.1")
    assert not await pings(platform, servers[2], "10.99.0.2")
    assert not await pings(platform, servers[0], "10.99.0.3")

    vlan_bridges = {link for link in link_names(namespace) if link.startswith("oh-v")}
    assert len(vlan_bridges) == 2
    await asyncio.gather(*(post(client, auth, f"/servers/{s}/destroy") for s in servers))
    for server in servers:
        assert await wait_status(client, auth, server, "stopped") is None
    assert link_names(namespace) == {"lo", PUBLIC_BRIDGE}  # no tap, no VLAN bridge left


async def test_a_daemon_restart_keeps_what_running_servers_use_and_removes_the_rest(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, config: Config,
    namespace: str,
) -> None:  # fmt: skip
    diskless = "cpu 500\nmem 64\nnic:0:model e1000\nnic:0:dhcp auto\npersistent true\n"
    keeps = await create_server(client, auth, "name keeps\nnic:0:block tcp/22\n" + diskless)
    ends = await create_server(client, auth, "name ends\nnic:0:block udp/53\n" + diskless)
    driver = bridge_platform.servers.networks.driver
    taps = {s["server"]: driver.tap_name(driver_plan(bridge_platform, s["server"]))
            for s in (keeps, ends)}  # fmt: skip
    assert set(taps.values()) <= link_names(namespace)

    await bridge_platform.servers.close()  # the daemon stops; its VMs run on
    assert set(taps.values()) <= link_names(namespace)
    assert driver.dhcp.pid() is not None
    ended_vm = platform_vm_pid(bridge_platform, ends["server"])
    await kill_and_wait(ended_vm)  # a VM ends while no daemon watches
    # Rules lost meanwhile (an operator's `nft flush ruleset`) are made again from the servers'.
    table = nic_firewall.table_name(PUBLIC_BRIDGE)
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "delete", "table", "bridge", table],
                   check=True, timeout=10)  # fmt: skip

    restarted = open_platform(config)
    try:
        await restarted.servers.recover()
        assert keeps["server"] in restarted.servers.lifecycle.active
        assert ends["server"] not in restarted.servers.lifecycle.active
        assert link_names(namespace) == {"lo", PUBLIC_BRIDGE, taps[keeps["server"]]}
        entries = restarted.servers.networks.driver.dhcp.entries()
        assert entries == {f"{keeps['server']}-0": (default_mac(keeps["server"], 0),
                                                    keeps["nic:0:dhcp:ip"])}  # fmt: skip
        # The blocked ports of the running server are in force again, the other's gone.
        blocks = blocked_ports(namespace)
        assert chain_name(taps[keeps["server"]]) in blocks and "tcp dport 22 " in blocks
        assert chain_name(taps[ends["server"]]) not in blocks
        await restarted.servers.lifecycle.driver.stop(keeps["server"])
        assert link_names(namespace) == {"lo", PUBLIC_BRIDGE}
        await restarted.servers.close()
        assert link_names(namespace) == {"lo"}
    finally:
        driver = restarted.servers.lifecycle.driver
        for server in driver.held():
            await driver.kill(server)
        restarted.close()


def blocked_ports(namespace: str) -> str:
    """The `nic:N:block` table of the platform, as nft lists it."""
    argv = ["nft", "list", "table", "bridge", nic_firewall.table_name(PUBLIC_BRIDGE)]
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout


async def test_a_nic_without_dhcp_is_offered_no_address(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str
) -> None:
    info = await create_server(client, auth, "name quiet\ncpu 500\nmem 64\nnic:0:model e1000\n")
    assert "nic:0:dhcp" not in info and "nic:0:dhcp:ip" not in info
    driver = bridge_platform.servers.networks.driver
    assert driver.dhcp.entries() == {}  # dnsmasq answers only MACs it has an entry for
    tap = driver.tap_name(driver_plan(bridge_platform, info["server"]))
    assert tap in link_names(namespace)
    await post(client, auth, f"/servers/{info['server']}/destroy")
    assert tap not in link_names(namespace)
    assert await first_free_address(client, auth) == "192.0.2.10"


async def first_free_address(client: TestClient, auth: dict[str, str]) -> str:
    """The address a new IP resource gets: the lowest one nobody holds."""
    return parse_properties(await post(client, auth, "/resources/ip/create"))["resource"]


def rfb_greeting_from(namespace: str, address: str, port: int) -> bytes:
    """What a VNC server says first, asked from inside `namespace`."""
    script = (
        "import socket\n"
        f"c = socket.create_connection(({address!r}, {port}), timeout=5)\n"
        "print(c.recv(12).decode())\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script],
        capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    return done.stdout.strip()


async def test_a_guest_reaches_of_its_host_only_dhcp_vnc_and_ping(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str,
    tiny_guest_image: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """A host service on all addresses (the API bound to 0.0.0.0, say) is not a guest's."""
    platform = bridge_platform
    (tmp_path / "site").mkdir()
    service = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server", "8081",
         "--bind", "0.0.0.0", "--directory", str(tmp_path / "site")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        drive = await upload_guest(client, auth, tiny_guest_image)
        server = (await create_server(
            client, auth,
            f"name g\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\n"
            "nic:0:model e1000\nnic:0:dhcp auto\nvnc:ip auto\nvnc:password secret\n",
        ))["server"]  # fmt: skip
        await leases(platform, server)  # DHCP from the host still works
        await wait_ready(platform, server)
        host = platform.servers.networks.driver.vnc_address
        assert host is not None
        assert await pings(platform, server, host)
        probe = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {} {} 2>&1; echo rc=$?"
        refused = await console_run(platform, server, probe.format(host, 8081))
        assert "HTTP/" not in refused and "refused" in refused, refused
        # Its own VNC, on the host's address, stays reachable (as from anywhere).
        argv = (platform.servers.run_dir(server) / "qemu.argv").read_text()
        match = re.search(r"-vnc [0-9.]+:(\d+),", argv)
        assert match is not None, argv
        vnc_port = 5900 + int(match.group(1))
        display = await console_run(platform, server, probe.format(host, vnc_port))
        assert "RFB 003.008" in display, display
    finally:
        service.kill()
        service.wait(timeout=10)


@contextlib.contextmanager
def public_peer(namespace: str) -> Iterator[str]:
    """A host on the public network: a namespace of its own, cabled to the public bridge."""
    with network_namespace() as peer:
        cable = ["ip", "link", "add", "ohpeer0", "netns", peer, "type", "veth", "peer", "name"]
        subprocess.run([*cable, "ohpeer1", "netns", namespace], check=True, timeout=10)
        subprocess.run(["ip", "-n", namespace, "link", "set", "ohpeer1", "master", PUBLIC_BRIDGE,
                        "up"], check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-n", peer, "addr", "add", "192.0.2.250/24", "dev", "ohpeer0"],
                       check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-n", peer, "link", "set", "ohpeer0", "up"], check=True, timeout=10)
        yield peer


async def test_vnc_ip_puts_vnc_on_an_address_of_the_users_and_auto_takes_one_from_the_pool(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str
) -> None:
    """Neither server has an address on nic:0 (no NIC at all): the host takes the VNC
    address on the public bridge for as long as the server runs."""
    mine = await first_free_address(client, auth)  # an IP resource of the user's
    info = await create_server(
        client, auth, f"name a\ncpu 500\nmem 64\nvnc:ip {mine}\nvnc:password pw\n"
    )
    with public_peer(namespace) as peer:  # once the public bridge is up
        assert info["vnc:ip"] == mine and "vnc:port" not in info
        assert rfb_greeting_from(peer, mine, 5900) == b"RFB 003.008"
        # Held: no other server may take it meanwhile.
        response = await client.post(
            "/servers/create/stopped",
            data=f"name b\ncpu 500\nmem 64\nnic:0:model e1000\nnic:0:dhcp {mine}\n",
            headers=auth,
        )
        other = parse_properties(await response.text())["server"]
        response = await client.post(f"/servers/{other}/start", headers=auth)
        assert response.status == 409, await response.text()
        await post(client, auth, f"/servers/{info['server']}/stop")
        assert rfb_greeting_from(peer, mine, 5900) == b""  # gone with the server

        info = await create_server(
            client, auth, "name c\ncpu 500\nmem 64\nvnc:ip auto\nvnc:password pw\n"
        )
        temporary = info["vnc:ip"]
        assert temporary not in (mine, bridge_platform.servers.networks.driver.vnc_address)
        assert rfb_greeting_from(peer, temporary, 5900) == b"RFB 003.008"
        await post(client, auth, f"/servers/{info['server']}/stop")
        assert rfb_greeting_from(peer, temporary, 5900) == b""
    # The temporary address went back to the pool.
    assert await first_free_address(client, auth) == temporary


async def test_vnc_is_reached_on_the_servers_own_address_port_5900(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, namespace: str
) -> None:
    body = "name vnc\ncpu 500\nmem 64\nnic:0:model e1000\nnic:0:dhcp auto\nvnc:ip auto\n"
    info = await create_server(client, auth, body + "vnc:password pw\n")
    address = info["nic:0:dhcp"]
    assert info["vnc:ip"] == address and "vnc:port" not in info  # the service's overlay
    with public_peer(namespace) as peer:
        # The guest (not booted here) would answer ARP for its address; say it for it.
        mac = default_mac(info["server"], 0)
        subprocess.run(["ip", "-n", peer, "neigh", "add", address, "lladdr", mac, "dev",
                        "ohpeer0"], check=True, timeout=10)  # fmt: skip
        assert rfb_greeting_from(peer, address, 5900) == b"RFB 003.008"
        await post(client, auth, f"/servers/{info['server']}/stop")
        assert rfb_greeting_from(peer, address, 5900) == b""  # gone with the server
