"""Networks across hosts with real guests on agents in bridge mode (tests/cluster/
bridge_hosts.py: hosts hv1 and hv2 in network namespaces, their public bridges on one fabric
L2, VXLAN between them over the fabric, an API daemon on PostgreSQL). Three tiny TCG guests,
each with a public NIC (DHCP) and a VLAN NIC, are placed by their boot drives: G1 on hv1 and
G2 on hv2 on VLAN 1, G3 on hv2 on VLAN 2; everything is checked through the API and from the
fabric (a machine on the provider's public network):

- each guest's DHCP lease is the address its info shows, and that address answers from the
  fabric, on both hosts;
- G1 and G2 reach each other over VLAN 1 across the hosts; G3 (VLAN 2, same subnet) reaches
  neither of them;
- VNC on `vnc:ip` answers the RFB greeting for a server on either host; `nic:0:block` set
  live on G2 drops a port from the fabric, unset opens it again;
- `openhosting-admin host drain hv1` moves G1 to hv2 without a reboot: its address, its VNC
  and its VLAN still answer, `started` unchanged, hv1 holds no VM and no tap.
"""

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from openhosting.services.servers.server_network import default_mac
from testbed.build_guest import BOOT_MARKER, LEASE_MARKER, READY_MARKER, build_tiny_guest
from testbed.cluster import namespaces
from testbed.serial_console import SerialConsole, read_serial_log, wait_for_log, wait_for_matches
from tests.cluster.bridge_hosts import BridgeHosts, drain_argv
from tests.integration.netns_helpers import answer_from, link_names
from tests.integration.test_vxlan_networking import pings

BOOT_TIMEOUT = 90.0  # three TCG guests at once on a shared machine
OPEN_TIMEOUT = 5.0
PORT = 8080
VLAN_ADDRESSES = {"g1": "10.77.0.1", "g2": "10.77.0.2", "g3": "10.77.0.3"}


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str) -> Iterator[BridgeHosts]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    with ExitStack() as stack:
        made = BridgeHosts(tmp_path, postgres_url, stack)
        yield made
    # Nothing of the hosts is left: their namespaces went with them.
    topology = made.topology
    left = namespaces() & {topology.fabric, *map(topology.namespace, topology.names)}
    assert left == set(), left


def console_run(socket: Path, command: str) -> str:
    async def run() -> str:
        console = await SerialConsole.open(socket)
        try:
            return await console.run(command, timeout=30)
        finally:
            await console.close()

    return asyncio.run(run())


def guest_pings(socket: Path, address: str) -> bool:
    output = console_run(socket, f"ping -c 2 -W 2 {address}")
    return bool(re.search(r"[1-9]\d* packets received", output))


def vxlan_entries(hosts: BridgeHosts, host: str) -> dict[str, dict[str, str]]:
    """The forwarding entries of single MACs on `host`'s VXLAN devices: device → MAC → the
    host's address it is sent to."""
    shown = subprocess.run(
        ["bridge", "-n", hosts.topology.namespace(host), "-j", "fdb", "show"],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    entries: dict[str, dict[str, str]] = {}
    for entry in json.loads(shown):
        if "dst" in entry and entry["mac"] != "00:00:00:00:00:00":
            entries.setdefault(entry["ifname"], {})[entry["mac"]] = entry["dst"]
    return entries


def lease_of(log: Path, mac: str) -> str:
    """The address the guest's DHCP lease for `mac` gave, as its serial line says."""
    found = asyncio.run(
        wait_for_matches(log, rf"{LEASE_MARKER} \S+ {mac} ([0-9.]+)", timeout=BOOT_TIMEOUT)
    )
    return found[-1].group(1)


def test_guests_on_two_bridge_mode_hosts_share_vlans_public_addresses_vnc_and_a_drain(
    hosts: BridgeHosts,
) -> None:
    api = hosts.api
    image = build_tiny_guest().read_bytes()
    vlans = [api.properties("/resources/vlan/create", f"name v{n}\n".encode())["resource"]
             for n in (1, 2)]  # fmt: skip

    def guest_drive(avoid: str = "") -> str:
        body = f"name g\nsize {len(image)}\nencryption:cipher none\navoid {avoid}\n"
        drive = api.properties("/drives/create", body.encode())["drive"]
        assert api.call(f"/drives/{drive}/write", image).status == 204
        return drive

    # Hosts of equal room: the first by name. The API node's host (no room for a server)
    # takes a small drive, so that G3's drive, kept from it and from G1's, goes to hv2.
    d1 = guest_drive()
    d2 = guest_drive(avoid=d1)
    spare = api.properties("/drives/create", f"name z\nsize 1M\navoid {d1} {d2}\n".encode())
    d3 = guest_drive(avoid=f"{spare['drive']} {d1}")
    placed = {drive: api.properties(f"/drives/{drive}/info")["host"] for drive in (d1, d2, d3)}
    assert [placed[d1], placed[d2], placed[d3]] == ["hv1", "hv2", "hv2"], placed

    servers: dict[str, str] = {}
    where = {"g1": "hv1", "g2": "hv2", "g3": "hv2"}
    for name, drive, vlan in (("g1", d1, vlans[0]), ("g2", d2, vlans[0]), ("g3", d3, vlans[1])):
        body = (
            f"name {name}\ncpu 1000\nmem 128\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
            "nic:0:model virtio\nnic:0:dhcp auto\n"
            f"nic:1:model virtio\nnic:1:vlan {vlan}\nvnc:ip auto\nvnc:password secret\n"
        )
        servers[name] = api.properties("/servers/create/stopped", body.encode())["server"]
        started = api.call(f"/servers/{servers[name]}/start", b"")
        assert started.status == 204, started
    try:
        infos = {name: api.properties(f"/servers/{server}/info")
                 for name, server in servers.items()}  # fmt: skip
        assert {name: info["host"] for name, info in infos.items()} == where

        def console(name: str) -> Path:
            return hosts.console(where[name], servers[name])

        # (b) Each guest's lease is its info's address, which answers from the fabric.
        for name, server in servers.items():
            log = hosts.serial_log(where[name], server)
            asyncio.run(wait_for_log(log, READY_MARKER, timeout=BOOT_TIMEOUT))
            address = infos[name]["nic:0:dhcp:ip"]
            assert lease_of(log, default_mac(server, 0)) == address, name
            assert pings(hosts.fabric, address), (name, address)

        # (a) VLAN 1 spans the hosts; VLAN 2 on the same subnet reaches nobody of it.
        for name, server in servers.items():
            mac = default_mac(server, 1)
            iface = f"$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)"
            console_run(
                console(name),
                f"ifconfig {iface} {VLAN_ADDRESSES[name]} netmask 255.255.255.0 mtu 1450",
            )
        assert guest_pings(console("g1"), VLAN_ADDRESSES["g2"])
        assert guest_pings(console("g2"), VLAN_ADDRESSES["g1"])
        assert not guest_pings(console("g3"), VLAN_ADDRESSES["g1"])  # across the hosts
        assert not guest_pings(console("g3"), VLAN_ADDRESSES["g2"])  # on its own host
        # hv1 sends G2's VLAN frames to hv2 alone: a forwarding entry of its MAC.
        device = "oh-x" + vlans[0].replace("-", "")[:11]
        assert vxlan_entries(hosts, "hv1")[device].get(default_mac(servers["g2"], 1)) == (
            hosts.topology.address("hv2")
        )

        # (c) VNC on vnc:ip, on either host.
        for name in ("g1", "g2"):
            assert infos[name]["vnc:ip"] == infos[name]["nic:0:dhcp:ip"]
            greeting = answer_from(hosts.fabric, "tcp", infos[name]["vnc:ip"], 5900, OPEN_TIMEOUT)
            assert greeting == "RFB 0", (name, greeting)
        # nic:0:block set live on G2 (hv2) drops its port from the fabric; unset, it answers.
        console_run(console("g2"), f"(nc -ll -p {PORT} -e echo hello </dev/null >/dev/null 2>&1 &)")
        g2 = infos["g2"]["nic:0:dhcp:ip"]
        assert answer_from(hosts.fabric, "tcp", g2, PORT, OPEN_TIMEOUT) == "hello"
        blocked = api.properties(
            f"/servers/{servers['g2']}/set", f"nic:0:block tcp/{PORT}".encode()
        )
        assert blocked["nic:0:block"] == f"tcp/{PORT}"
        assert answer_from(hosts.fabric, "tcp", g2, PORT) == "TimeoutError"
        api.properties(f"/servers/{servers['g2']}/set", b"nic:0:block \n")
        assert answer_from(hosts.fabric, "tcp", g2, PORT, OPEN_TIMEOUT) == "hello"

        # (d) G3 stopped (one guest fewer on hv2), hv1 drained: G1 runs on at hv2.
        assert api.call(f"/servers/{servers['g3']}/stop", b"").status == 204
        argv, env = drain_argv(hosts, "hv1")
        drained = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
        assert drained.returncode == 0, (drained.stdout, drained.stderr)
        assert drained.stdout == f"{servers['g1']} moved hv2\n"
        where["g1"] = "hv2"
        after = api.properties(f"/servers/{servers['g1']}/info")
        assert (after["status"], after["host"]) == ("active", "hv2")
        assert after["started"] == infos["g1"]["started"]
        g1 = after["nic:0:dhcp:ip"]
        assert g1 == infos["g1"]["nic:0:dhcp:ip"]
        assert BOOT_MARKER not in read_serial_log(hosts.serial_log("hv2", servers["g1"]))
        assert pings(hosts.fabric, g1)  # its address still answers, from its new host
        assert answer_from(hosts.fabric, "tcp", g1, 5900, OPEN_TIMEOUT) == "RFB 0"
        assert guest_pings(console("g1"), VLAN_ADDRESSES["g2"])
        # hv1 holds nothing of it: no VM, no tap.
        assert not (hosts.run_dirs["hv1"] / servers["g1"]).exists()
        taps = {n for n in link_names(hosts.topology.namespace("hv1")) if n.startswith("oh-t")}
        assert taps == set()
    finally:
        for server in servers.values():
            api.call(f"/servers/{server}/stop", b"")
