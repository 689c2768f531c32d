"""VLANs across hosts as VXLAN segments, on the real kernel: a "fabric" namespace with a
bridge stands for the provider's underlay, three "host" namespaces are cabled to it by veth
pairs and the first two run the bridge-mode driver (the third only listens, to count what
reaches it); a "guest" namespace per NIC is cabled into the VLAN bridge where a tap would be
(a tap with no QEMU behind it carries nothing). Every
namespace, and so every link, address and dnsmasq in them, is the test's and goes with it.
The last test runs a real TCG guest through the platform on host 1."""

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import Connection, Engine, insert

from openhosting.config import Config, NetworkSettings
from openhosting.network.bridge_mode import BridgeNetwork
from openhosting.network.driver import NicPlan
from openhosting.network.errors import NetworkError
from openhosting.network.pool import AddressPool
from openhosting.network.vxlan import vni_of
from openhosting.services.platform import Platform
from openhosting.services.servers.server_network import default_mac
from openhosting.store import hosts as host_store
from openhosting.store import vnis as vni_store
from openhosting.store.database import open_engine
from openhosting.store.records import HostRecord
from openhosting.store.tables import resources, server_nics, servers, users
from openhosting.wire.text import parse_properties
from tests.conftest import config_in
from tests.integration.bridge_platform import bridge_platform_fixture  # noqa: F401 (a fixture)
from tests.integration.netns_helpers import link_names, network_namespace
from tests.integration.server_helpers import create_server, upload_guest, wait_ready, wait_status
from tests.integration.test_bridge_networking import console_run, post
from tests.integration.test_bridge_networking import pings as guest_pings

# The underlay: a benchmarking range, only ever inside the test's namespaces.
UNDERLAY = ("198.18.0.1", "198.18.0.2", "198.18.0.3")
VLAN_1 = "3a9c6b52-1d7e-4f08-a2b3-c4d5e6f7a8b9"
VLAN_2 = "5e1f0a7c-9b24-4d3e-8f61-0a2b3c4d5e6f"
# Two VLANs whose UUIDs hash to one VNI (13683501), found by trying UUIDs.
CLASH_A = "a0cb9e54-05e6-577d-92f8-7908c5d28a31"
CLASH_B = "e0d24a38-2938-50e9-827c-a32273bfb513"
USER = "11111111-1111-4111-8111-111111111111"


def ip(namespace: str, *args: str) -> None:
    subprocess.run(["ip", "-n", namespace, *args], check=True, timeout=10)


# An ICMP echo from Python (no ping binary on this machine): 3 requests half a second apart.
_PING = """
import socket, struct, sys, time
address = sys.argv[1]
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.5)
for seq in range(3):
    head = struct.pack("!BBHHH", 8, 0, 0, 0x6F68, seq) + b"vxlan-test"
    s.sendto(head[:2] + struct.pack("!H", checksum(head)) + head[4:], (address, 0))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            data, (source, _) = s.recvfrom(2048)
        except TimeoutError:
            break
        icmp = data[(data[0] & 15) * 4:]
        if source == address and icmp[0] == 0 and icmp[4:6] == b"oh":
            print("reply")
            sys.exit(0)
print("none")
"""


def pings(namespace: str, address: str) -> bool:
    """Whether `address` answers one of 3 ICMP echoes from `namespace` (1.5 s at most)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", _PING, address],
        capture_output=True, text=True, timeout=15, check=True,
    )  # fmt: skip
    return done.stdout.strip() == "reply"


@dataclass
class Fabric:
    """The namespaces of the test: `hosts[i]` has underlay address UNDERLAY[i] on `u0`."""

    stack: ExitStack
    fabric: str
    hosts: tuple[str, ...]

    def guest(self, host: str, bridge: str, name: str, address: str) -> str:
        """A guest namespace whose `eth0` (at `address`/24, MTU 1450) is a port of `bridge`
        on `host` through the host's link `name`."""
        guest = self.stack.enter_context(network_namespace())
        ip(host, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", guest)
        ip(host, "link", "set", name, "master", bridge, "up")
        ip(guest, "link", "set", "eth0", "mtu", "1450", "up")
        ip(guest, "addr", "add", f"{address}/24", "dev", "eth0")
        return guest


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with ExitStack() as stack:
        fabric = stack.enter_context(network_namespace())
        hosts = tuple(stack.enter_context(network_namespace()) for _ in UNDERLAY)
        ip(fabric, "link", "add", "fab", "type", "bridge")
        ip(fabric, "link", "set", "fab", "up")
        for index, host in enumerate(hosts):
            port = f"f{index}"
            ip(fabric, "link", "add", port, "type", "veth", "peer", "name", "u0", "netns", host)
            ip(fabric, "link", "set", port, "master", "fab", "up")
            ip(host, "addr", "add", f"{UNDERLAY[index]}/24", "dev", "u0")
            ip(host, "link", "set", "u0", "up")
        yield Fabric(stack, fabric, hosts)


def host_driver(
    fabric: Fabric, index: int, run_dir: Path, peers: str | None = None
) -> BridgeNetwork:
    settings = NetworkSettings(
        mode="bridge",
        namespace=fabric.hosts[index],
        lease_seconds=120,
        vxlan_local=UNDERLAY[index],
        vxlan_device="u0",
        vxlan_peers=UNDERLAY[1 - index] if peers is None else peers,
    )
    pool = AddressPool.parse(
        settings.pool_subnet, settings.pool_gateway, settings.pool_nameservers, settings.pool_range
    )
    return BridgeNetwork(settings, pool, run_dir)


@pytest.fixture
async def drivers(fabric: Fabric, tmp_path: Path) -> AsyncIterator[tuple[BridgeNetwork, ...]]:
    networks = tuple(host_driver(fabric, index, tmp_path / f"host{index}") for index in (0, 1))
    yield networks
    for network in networks:
        await network.dhcp.stop()


def nic(server: int, vlan: str, vni: int | None = None) -> NicPlan:
    mac = f"52:54:00:00:00:{server:02x}"
    return NicPlan(f"{server:08x}-0000-4000-8000-000000000000", 0, mac, vlan=vlan, vni=vni)


def flood_list(namespace: str, device: str) -> set[str]:
    shown = subprocess.run(
        ["bridge", "-n", namespace, "-j", "fdb", "show", "dev", device],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return {e["dst"] for e in json.loads(shown) if e["mac"] == "00:00:00:00:00:00"}


def listener(namespace: str, name: str, vni: int) -> None:
    """A VXLAN device of VNI `vni` in `namespace` (at UNDERLAY[2]) in no bridge: it only
    counts the frames of that VNI that other hosts send to this one."""
    ip(namespace, "link", "add", name, "type", "vxlan", "id", str(vni), "local", UNDERLAY[2],
       "dstport", "4789", "nolearning", "dev", "u0")  # fmt: skip
    ip(namespace, "link", "set", name, "up")


def settled_count(namespace: str, name: str) -> int:
    """`received` once it has stayed the same for a second (at most 5 s of looking)."""
    count = received(namespace, name)
    for _ in range(10):
        time.sleep(1.0)
        now = received(namespace, name)
        if now == count:
            break
        count = now
    return count


def received(namespace: str, name: str) -> int:
    """The packets device `name` in `namespace` received."""
    shown = subprocess.run(
        ["ip", "-n", namespace, "-j", "-s", "link", "show", "dev", name],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return int(json.loads(shown)[0]["stats64"]["rx"]["packets"])


async def test_guests_of_a_vlan_on_two_hosts_reach_each_other_and_no_other_vlan(
    fabric: Fabric, drivers: tuple[BridgeNetwork, BridgeNetwork]
) -> None:
    one, two = drivers
    host_1, host_2, _ = fabric.hosts
    # Each VLAN has a server on each host: A and C on VLAN 1, B and D on VLAN 2.
    nics_1 = [nic(1, VLAN_1), nic(2, VLAN_2)]
    nics_2 = [nic(3, VLAN_1), nic(4, VLAN_2)]
    await one.attach(nics_1)
    await two.attach(nics_2)

    device = one.vxlan_device(VLAN_1)
    links = await one._links.all()
    assert links[device].master == one.vlan_bridge(VLAN_1)
    assert await one._links.vxlan_of(device) == (vni_of(VLAN_1), UNDERLAY[0], 4789)
    assert vni_of(VLAN_1) != vni_of(VLAN_2)
    assert flood_list(host_1, device) == {UNDERLAY[1]}  # head-end replication to the peer
    assert "mtu 1450 " in subprocess.run(
        ["ip", "-n", host_1, "link", "show", one.vlan_bridge(VLAN_1)],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip

    a = fabric.guest(host_1, one.vlan_bridge(VLAN_1), "ga", "10.77.0.1")
    b = fabric.guest(host_1, one.vlan_bridge(VLAN_2), "gb", "10.77.0.2")
    c = fabric.guest(host_2, two.vlan_bridge(VLAN_1), "gc", "10.77.0.3")
    d = fabric.guest(host_2, two.vlan_bridge(VLAN_2), "gd", "10.77.0.4")
    assert pings(a, "10.77.0.3")  # VLAN 1 across the hosts
    assert pings(d, "10.77.0.2")  # VLAN 2 across the hosts
    # One subnet on both VLANs: only the VLAN (the VNI across hosts) keeps them apart.
    assert not pings(a, "10.77.0.4")
    assert not pings(c, "10.77.0.2")
    assert not pings(b, "10.77.0.1")

    # The guests' links go (as QEMU's taps would), then the servers stop.
    for host, link in ((host_1, "ga"), (host_1, "gb"), (host_2, "gc"), (host_2, "gd")):
        ip(host, "link", "delete", link)
    await one.detach(nics_1[:1])
    names = link_names(host_1)
    assert one.vxlan_device(VLAN_1) not in names and one.vlan_bridge(VLAN_1) not in names
    assert one.vxlan_device(VLAN_2) in names  # VLAN 2 still has a server here
    await one.detach(nics_1[1:])
    await two.detach(nics_2)
    for network, host in ((one, host_1), (two, host_2)):
        await network.close(idle=True)
        assert link_names(host) == {"lo", "u0"}


async def test_two_vlans_of_one_vni_on_a_host_are_refused_not_joined(
    fabric: Fabric, drivers: tuple[BridgeNetwork, BridgeNetwork]
) -> None:
    one, _ = drivers
    assert vni_of(CLASH_A) == vni_of(CLASH_B)
    await one.attach([nic(1, CLASH_A)])
    with pytest.raises(NetworkError, match="already another VLAN's"):
        await one.attach([nic(2, CLASH_B)])
    names = link_names(fabric.hosts[0])
    assert one.vlan_bridge(CLASH_B) not in names and one.vxlan_device(CLASH_B) not in names
    assert one.vxlan_device(CLASH_A) in names
    await one.detach([nic(1, CLASH_A)])
    await one.close(idle=True)
    assert link_names(fabric.hosts[0]) == {"lo", "u0"}


def database_of_three_hosts(path: Path) -> Engine:
    """A store where CLASH_A and CLASH_B are VLANs (with the VNIs the database gave them) and
    hosts 1 to 3 are online with their underlay addresses, a fourth offline. Host 1 runs a
    server on each VLAN, host 2 one on CLASH_B, host 3 one on CLASH_A, the offline host one on
    CLASH_B."""
    engine = open_engine(path)
    now = time.time()
    with engine.begin() as connection:
        connection.execute(insert(users).values(uuid=USER, key_hash="0" * 64, created_at=0))
        for vlan in (CLASH_A, CLASH_B):
            vni = vni_store.allocate_vni(connection, vni_of(vlan))
            connection.execute(
                insert(resources).values(
                    type="vlan", resource=vlan, user=USER, created_at=0, vni=vni
                )
            )
        for name, address, at in (
            ("hv-1", UNDERLAY[0], now),
            ("hv-2", UNDERLAY[1], now),
            ("hv-3", UNDERLAY[2], now),
            ("hv-4", "198.18.0.4", now - 3600),  # offline: in nobody's flood list
        ):
            host_store.register_host(connection, host_record(name, address, at))
        for server, host, vlans in (
            (1, "hv-1", (CLASH_A, CLASH_B)),
            (3, "hv-2", (CLASH_B,)),
            (5, "hv-3", (CLASH_A,)),
            (6, "hv-4", (CLASH_B,)),
        ):
            server_row(connection, server, host, vlans)
    return engine


def server_row(connection: Connection, server: int, host: str, vlans: Sequence[str]) -> None:
    """An active server's row on `host`, with a NIC on each of `vlans` (held: `server_nics`)."""
    uuid = nic(server, vlans[0]).server
    connection.execute(
        insert(servers).values(
            uuid=uuid, user=USER, config="{}", status="active", created_at=0, host=host
        )
    )
    for index, vlan in enumerate(vlans):
        mac = f"52:54:00:00:{server:02x}:{index:02x}"
        values = {"server": uuid, "nic": index, "user": USER, "network": vlan, "mac": mac}
        connection.execute(insert(server_nics).values(**values))


def lists_of(engine: Engine, *names: str) -> list[dict[str, list[str]]]:
    since = time.time() - 20
    with engine.connect() as connection:
        return [vni_store.flood_lists(connection, name, "hv-1", since) for name in names]


def host_record(name: str, vxlan_local: str, at: float) -> HostRecord:
    return HostRecord(
        name=name, state="online", cores=2, core_mhz=2000, memory_mb=1024,
        disk_bytes_by_tier={}, heartbeat_at=at, created_at=at, vxlan_local=vxlan_local,
    )  # fmt: skip


async def test_each_vlan_floods_only_to_the_hosts_running_its_servers_by_its_database_vni(
    fabric: Fabric, tmp_path: Path
) -> None:
    engine = database_of_three_hosts(tmp_path / "state.sqlite")
    with engine.connect() as connection:
        vnis = vni_store.vnis_of(connection, [CLASH_A, CLASH_B])
    lists = lists_of(engine, "hv-1", "hv-2")
    assert vnis[CLASH_A] != vnis[CLASH_B] and vni_of(CLASH_A) == vni_of(CLASH_B)
    assert lists == [
        {CLASH_A: [UNDERLAY[2]], CLASH_B: [UNDERLAY[1]]},
        {CLASH_B: [UNDERLAY[0]]},
    ]
    # The configured peer lists are wrong on purpose: the database's are the ones used.
    one = host_driver(fabric, 0, tmp_path / "host0", peers="198.18.0.7")
    two = host_driver(fabric, 1, tmp_path / "host1", peers="198.18.0.7")
    await one.set_vxlan_peers(lists[0])
    await two.set_vxlan_peers(lists[1])
    host_1, host_2, host_3 = fabric.hosts
    # Host 3 runs no server of CLASH_B: it counts what reaches it of either VLAN.
    listener(host_3, "xa", vnis[CLASH_A])
    listener(host_3, "xb", vnis[CLASH_B])
    nics_1 = [nic(1, CLASH_A, vnis[CLASH_A]), nic(2, CLASH_B, vnis[CLASH_B])]
    nics_2 = [nic(3, CLASH_B, vnis[CLASH_B])]
    try:
        await one.attach(nics_1)  # both on one host: refused when VNIs were hashes
        await two.attach(nics_2)
        for vlan in (CLASH_A, CLASH_B):
            device = one.vxlan_device(vlan)
            assert await one._links.vxlan_of(device) == (vnis[vlan], UNDERLAY[0], 4789)
        assert flood_list(host_1, one.vxlan_device(CLASH_A)) == {UNDERLAY[2]}
        assert flood_list(host_1, one.vxlan_device(CLASH_B)) == {UNDERLAY[1]}
        assert flood_list(host_2, two.vxlan_device(CLASH_B)) == {UNDERLAY[0]}

        a = fabric.guest(host_1, one.vlan_bridge(CLASH_A), "ga", "10.77.0.1")
        fabric.guest(host_1, one.vlan_bridge(CLASH_B), "gb", "10.77.0.2")
        c = fabric.guest(host_2, two.vlan_bridge(CLASH_B), "gc", "10.77.0.3")
        assert pings(c, "10.77.0.2")  # CLASH_B across the hosts, by its database VNI
        assert not pings(a, "10.77.0.3")  # CLASH_A's hash is CLASH_B's, its VNI is not
        # CLASH_A's broadcasts (a's ARP) reached host 3, which runs one of its servers;
        # none of CLASH_B's did (c's ARP, b's answers to a MAC its device does not know).
        assert received(host_3, "xa") > 0
        assert received(host_3, "xb") == 0

        # CLASH_B's first server on host 3: at the next refresh its hosts flood to host 3.
        with engine.begin() as connection:
            server_row(connection, 7, "hv-3", (CLASH_B,))
        lists = lists_of(engine, "hv-1", "hv-2")
        assert lists[1] == {CLASH_B: [UNDERLAY[0], UNDERLAY[2]]}
        await one.set_vxlan_peers(lists[0])
        await two.set_vxlan_peers(lists[1])
        assert flood_list(host_1, one.vxlan_device(CLASH_A)) == {UNDERLAY[2]}
        assert flood_list(host_1, one.vxlan_device(CLASH_B)) == {UNDERLAY[1], UNDERLAY[2]}
        assert pings(c, "10.77.0.2")
        assert received(host_3, "xb") > 0
        # No other host in the table: the configured peers again.
        await one.set_vxlan_peers(None)
        assert flood_list(host_1, one.vxlan_device(CLASH_A)) == {"198.18.0.7"}
    finally:
        engine.dispose()
        for host, link in ((host_1, "ga"), (host_1, "gb"), (host_2, "gc")):
            subprocess.run(["ip", "-n", host, "link", "delete", link], timeout=10, check=False)
        await one.detach(nics_1)
        await two.detach(nics_2)
        for network in (one, two):
            await network.close(idle=True)
    assert link_names(host_1) == link_names(host_2) == {"lo", "u0"}


def unicast_entries(namespace: str, device: str) -> dict[str, str]:
    """The forwarding entries of single MACs on `device`: MAC → the host it is sent to."""
    shown = subprocess.run(
        ["bridge", "-n", namespace, "-j", "fdb", "show", "dev", device],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return {
        e["mac"]: e["dst"]
        for e in json.loads(shown)
        if "dst" in e and e["mac"] != "00:00:00:00:00:00"
    }


def no_ipv6(namespace: str, *links: str) -> None:
    """No IPv6 on `links` in `namespace`: their router solicitations and reports are
    multicast, flooded whatever the entries, and would blur a count of unicast frames."""
    for link in links:
        subprocess.run(
            ["ip", "netns", "exec", namespace, "sysctl", "-qw",
             f"net.ipv6.conf.{link}.disable_ipv6=1"],
            check=True, timeout=10,
        )  # fmt: skip


def quiet_guest(namespace: str, mac: str) -> None:
    """The guest's MAC set to `mac`, and no IPv6."""
    no_ipv6(namespace, "eth0")
    ip(namespace, "link", "set", "eth0", "address", mac)


async def test_a_remote_guests_mac_is_sent_to_its_host_alone_not_flooded(
    fabric: Fabric, drivers: tuple[BridgeNetwork, BridgeNetwork]
) -> None:
    one, two = drivers
    host_1, host_2, host_3 = fabric.hosts
    vni = vni_of(VLAN_1)
    # Host 3 is in VLAN 1's flood lists (as if it ran one of its servers): it counts what
    # reaches it of the VLAN.
    listener(host_3, "x1", vni)
    for host in (host_1, host_2):  # the VLAN bridges and VXLAN devices made from now on
        no_ipv6(host, "all", "default")
    await one.set_vxlan_peers({VLAN_1: [UNDERLAY[1], UNDERLAY[2]]})
    await two.set_vxlan_peers({VLAN_1: [UNDERLAY[0], UNDERLAY[2]]})
    await one.attach([nic(1, VLAN_1)])
    await two.attach([nic(3, VLAN_1)])
    try:
        a = fabric.guest(host_1, one.vlan_bridge(VLAN_1), "ga", "10.77.0.1")
        c = fabric.guest(host_2, two.vlan_bridge(VLAN_1), "gc", "10.77.0.3")
        mac_a, mac_c = "52:54:00:0a:00:01", "52:54:00:0a:00:03"
        quiet_guest(a, mac_a)
        quiet_guest(c, mac_c)
        # Each host sends the other's guest's MAC to that host alone (this host's own
        # address and a malformed MAC left out).
        await one.set_vxlan_macs({VLAN_1: {mac_c: UNDERLAY[1], "52:54:00:0a:00:09": UNDERLAY[0],
                                           "not a mac": UNDERLAY[1]}})  # fmt: skip
        await two.set_vxlan_macs({VLAN_1: {mac_a.upper(): UNDERLAY[0]}})
        assert unicast_entries(host_1, one.vxlan_device(VLAN_1)) == {mac_c: UNDERLAY[1]}
        assert unicast_entries(host_2, two.vxlan_device(VLAN_1)) == {mac_a: UNDERLAY[0]}

        assert pings(a, "10.77.0.3")  # the ARP floods (host 3 gets it), then unicast
        # Counted once the flood is over: on a loaded machine a late ARP answer makes the
        # guest ask again (broadcast, flooded) after the ping already returned.
        flooded = settled_count(host_3, "x1")
        assert flooded > 0
        assert pings(a, "10.77.0.3") and pings(c, "10.77.0.1")
        assert received(host_3, "x1") == flooded  # the echoes went to their host alone

        # The entries go (a guest stopped or moved away): unicast floods to the list again.
        await one.set_vxlan_macs({VLAN_1: {}})
        await two.set_vxlan_macs({VLAN_1: {}})
        assert unicast_entries(host_1, one.vxlan_device(VLAN_1)) == {}
        assert pings(a, "10.77.0.3")
        assert received(host_3, "x1") > flooded
        # The device goes with its VLAN's last server here, its entries with it; told
        # before the next one is made (as a start tells them), it is made with them.
        ip(host_1, "link", "delete", "ga")
        await one.detach([nic(1, VLAN_1)])
        await one.set_vxlan_macs({VLAN_1: {mac_c: UNDERLAY[1]}})
        await one.attach([nic(1, VLAN_1)])
        assert unicast_entries(host_1, one.vxlan_device(VLAN_1)) == {mac_c: UNDERLAY[1]}
    finally:
        for host, link in ((host_1, "ga"), (host_2, "gc")):
            subprocess.run(["ip", "-n", host, "link", "delete", link], timeout=10, check=False)
        await one.detach([nic(1, VLAN_1)])
        await two.detach([nic(3, VLAN_1)])
        for network in (one, two):
            await network.close(idle=True)


async def test_a_changed_peer_list_replaces_the_flood_list_at_reconcile(
    fabric: Fabric, drivers: tuple[BridgeNetwork, BridgeNetwork], tmp_path: Path
) -> None:
    one, _ = drivers
    await one.attach([nic(1, VLAN_1)])
    # The daemon restarts with another peer list (a host left, another came).
    settings = NetworkSettings(
        mode="bridge",
        namespace=fabric.hosts[0],
        lease_seconds=120,
        vxlan_local=UNDERLAY[0],
        vxlan_device="u0",
        vxlan_peers="198.18.0.7 198.18.0.8",
    )
    pool = AddressPool.parse(
        settings.pool_subnet, settings.pool_gateway, settings.pool_nameservers, settings.pool_range
    )
    again = BridgeNetwork(settings, pool, tmp_path / "host0")
    await again.reconcile([nic(1, VLAN_1)])
    assert flood_list(fabric.hosts[0], again.vxlan_device(VLAN_1)) == {"198.18.0.7", "198.18.0.8"}
    await again.detach([nic(1, VLAN_1)])
    await again.close(idle=True)
    assert link_names(fabric.hosts[0]) == {"lo", "u0"}


@pytest.fixture(name="config")
def host_1_config_fixture(tmp_path: Path, fabric: Fabric) -> Config:
    """The platform of host 1, in bridge mode with VXLAN to host 2."""
    return config_in(
        tmp_path,
        hypervisor={"accelerator": "tcg"},
        network={
            "mode": "bridge",
            "namespace": fabric.hosts[0],
            "lease_seconds": 120,
            "vxlan_local": UNDERLAY[0],
            "vxlan_device": "u0",
            "vxlan_peers": UNDERLAY[1],
        },
    )


async def test_a_qemu_guest_on_host_1_reaches_its_vlan_on_host_2(
    client: TestClient, auth: dict[str, str], bridge_platform: Platform, fabric: Fabric,
    tiny_guest_image: Path, tmp_path: Path,
) -> None:  # fmt: skip
    vlan = parse_properties(await post(client, auth, "/resources/vlan/create", "name v"))
    uuid = vlan["resource"]
    # Host 2 has a server on the VLAN: its bridge and VXLAN device, and a guest behind them.
    two = host_driver(fabric, 1, tmp_path / "host1")
    try:
        await two.attach([nic(9, uuid)])
        far = fabric.guest(fabric.hosts[1], two.vlan_bridge(uuid), "gfar", "10.77.0.3")

        drive = await upload_guest(client, auth, tiny_guest_image)
        body = (
            f"name near\ncpu 1000\nmem 128\nide:0:0 {drive}\nboot ide:0:0\n"
            f"nic:1:model rtl8139\nnic:1:vlan {uuid}\n"
        )
        server = (await create_server(client, auth, body))["server"]
        await wait_ready(bridge_platform, server)
        mac = default_mac(server, 1)
        iface = f"$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)"
        await console_run(
            bridge_platform, server, f"ifconfig {iface} 10.77.0.1 netmask 255.255.255.0 mtu 1450"
        )
        assert await guest_pings(bridge_platform, server, "10.77.0.3")
        assert pings(far, "10.77.0.1")

        await post(client, auth, f"/servers/{server}/destroy")
        assert await wait_status(client, auth, server, "stopped") is None
        names = link_names(fabric.hosts[0])
        assert not {name for name in names if name.startswith(("oh-v", "oh-x", "oh-t"))}
    finally:
        ip(fabric.hosts[1], "link", "delete", "gfar")
        await two.detach([nic(9, uuid)])
        await two.close(idle=True)
