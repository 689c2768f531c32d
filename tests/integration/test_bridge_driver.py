"""The bridge-mode network driver on real links and a real dnsmasq, in a namespace this test
creates: what attach makes, what detach, reconcile and close leave behind (nothing of ours)."""

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.config import NetworkSettings
from openhosting.hypervisor import process
from openhosting.hypervisor.spec import TapNetdev
from openhosting.network.bridge_mode import BridgeNetwork
from openhosting.network.driver import NicPlan
from openhosting.network.pool import AddressPool
from tests.integration.netns_helpers import NETNS_DIR, link_names, network_namespace

SERVER_A = "0f962616-2071-4173-be79-7dd084271edf"
SERVER_B = "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7c"
VLAN = "3a9c6b52-1d7e-4f08-a2b3-c4d5e6f7a8b9"
MAC_A, MAC_B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"


@pytest.fixture
def namespace() -> Iterator[str]:
    with network_namespace() as name:
        yield name


@pytest.fixture
async def driver(namespace: str, tmp_path: Path) -> AsyncIterator[BridgeNetwork]:
    settings = NetworkSettings(mode="bridge", namespace=namespace, lease_seconds=120)
    pool = AddressPool.parse(
        settings.pool_subnet, settings.pool_gateway, settings.pool_nameservers, settings.pool_range
    )
    network = BridgeNetwork(settings, pool, tmp_path / "network")
    yield network
    await network.dhcp.stop()


def in_namespace(pid: int, namespace: str) -> bool:
    theirs, pinned = os.stat(f"/proc/{pid}/ns/net"), os.stat(NETNS_DIR / namespace)
    return (theirs.st_dev, theirs.st_ino) == (pinned.st_dev, pinned.st_ino)


async def test_attach_makes_taps_bridges_and_entries_and_detach_removes_them(
    driver: BridgeNetwork, namespace: str
) -> None:
    await driver.start()
    dnsmasq = driver.dhcp.pid()
    assert dnsmasq is not None and in_namespace(dnsmasq, namespace)
    public = NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.10")
    private = NicPlan(SERVER_A, 1, MAC_B, vlan=VLAN)
    backends = await driver.attach([public, private])
    taps = {index: backend.ifname for index, backend in backends.items()
            if isinstance(backend, TapNetdev)}  # fmt: skip
    assert set(taps) == {0, 1}
    assert all(len(tap) <= 15 for tap in taps.values())
    links = await driver._links.all()
    assert links[taps[0]].master == "oh-public"
    assert links[taps[1]].master == driver.vlan_bridge(VLAN)
    assert driver.dhcp.entries() == {f"{SERVER_A}-0": (MAC_A, "192.0.2.10")}
    assert (await driver.counters([public, private])).rx_bytes == 0

    await driver.detach([public, private])
    assert link_names(namespace) == {"lo", "oh-public"}
    assert driver.dhcp.entries() == {}
    assert driver.dhcp.pid() == dnsmasq  # the DHCP server stays for other servers

    await driver.close(idle=True)
    assert driver.dhcp.pid() is None
    assert link_names(namespace) == {"lo"}
    assert not driver.dhcp.spec.directory.exists()


async def test_a_vlan_bridge_stays_while_another_server_is_on_it(
    driver: BridgeNetwork, namespace: str
) -> None:
    first = NicPlan(SERVER_A, 1, MAC_A, vlan=VLAN)
    second = NicPlan(SERVER_B, 1, MAC_B, vlan=VLAN)
    await driver.attach([first])
    await driver.attach([second])
    await driver.detach([first])
    assert driver.vlan_bridge(VLAN) in link_names(namespace)
    await driver.detach([second])
    assert driver.vlan_bridge(VLAN) not in link_names(namespace)


async def test_reconcile_keeps_what_running_servers_use_and_removes_the_rest(
    driver: BridgeNetwork, namespace: str
) -> None:
    kept = NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.10")
    ended = [NicPlan(SERVER_B, 0, MAC_B, address="192.0.2.11"),
             NicPlan(SERVER_B, 1, MAC_B, vlan=VLAN)]  # fmt: skip
    await driver.attach([kept])
    await driver.attach(ended)
    driver.dhcp.spec.hosts_dir.joinpath(f"{SERVER_A}-0").unlink()  # lost, e.g. by a crash
    await driver.reconcile([kept])
    assert link_names(namespace) == {"lo", "oh-public", driver.tap_name(kept)}
    assert driver.dhcp.entries() == {f"{SERVER_A}-0": (MAC_A, "192.0.2.10")}
    await driver.close(idle=False)  # a server runs: everything stays
    assert driver.dhcp.pid() is not None and driver.tap_name(kept) in link_names(namespace)


async def test_an_address_changing_hands_drops_the_old_lease_and_restarts_dnsmasq(
    driver: BridgeNetwork,
) -> None:
    await driver.start()
    before = driver.dhcp.pid()
    lease_file = driver.dhcp.spec.lease_file
    await driver.dhcp.stop()  # as if the previous holder had a lease when it stopped
    lease_file.write_text(f"4000000000 {MAC_A} 192.0.2.10 * 01:{MAC_A}\n")
    await driver.dhcp.ensure_running()
    await driver.attach([NicPlan(SERVER_B, 0, MAC_B, address="192.0.2.10")])
    assert MAC_A not in lease_file.read_text()
    assert driver.dhcp.pid() not in (None, before)
    restarted = driver.dhcp.pid()
    await driver.attach([NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.11")])
    assert driver.dhcp.pid() == restarted  # no handover, no restart


async def test_a_killed_dnsmasq_is_started_again_while_servers_hold_entries_only(
    driver: BridgeNetwork, namespace: str
) -> None:
    await driver.start()
    nic = NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.10")
    await driver.attach([nic])
    killed = driver.dhcp.pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert await process.wait_exit(killed, timeout=10)
    await driver.keep_helpers_running()
    restarted = driver.dhcp.pid()
    assert restarted not in (None, killed) and in_namespace(restarted, namespace)
    assert driver.dhcp.entries() == {driver.entry_name(nic): (MAC_A, "192.0.2.10")}
    await driver.keep_helpers_running()
    assert driver.dhcp.pid() == restarted  # running: left alone

    # No server holds an entry: a dead dnsmasq is not needed, and not started.
    await driver.detach([nic])
    os.kill(restarted, signal.SIGKILL)
    assert await process.wait_exit(restarted, timeout=10)
    await driver.keep_helpers_running()
    assert driver.dhcp.pid() is None


# A DHCP client's one request from inside a namespace (no DHCP client binary here): a
# broadcast DISCOVER or REQUEST for a MAC, naming the server and address it asks; prints
# the types of the answers to it within a second (2 OFFER, 5 ACK, 6 NAK), space-separated.
_DHCP_CLIENT = """
import socket, struct, sys, time
kind, mac, server, address = int(sys.argv[1]), bytes.fromhex(sys.argv[2].replace(":", "")), \\
    socket.inet_aton(sys.argv[3]), socket.inet_aton(sys.argv[4])
xid = 0x6F680001
head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                   bytes(4), bytes(4), bytes(4), mac, b"", b"")
options = bytes([53, 1, kind, 50, 4]) + address
if kind == 3:
    options += bytes([54, 4]) + server
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", 68))
s.sendto(head + b"\\x63\\x82\\x53\\x63" + options + b"\\xff", ("255.255.255.255", 67))
s.settimeout(0.2)
answers, deadline = [], time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        data = s.recv(2048)
    except TimeoutError:
        continue
    if struct.unpack("!I", data[4:8])[0] != xid:
        continue
    at = 240
    while at < len(data) and data[at] != 255:
        if data[at] == 53:
            answers.append(str(data[at + 2]))
        at += 2 + data[at + 1] if data[at] else 1
print(" ".join(answers))
"""
DISCOVER, REQUEST = 1, 3


def dhcp_answers(client: str, kind: int, mac: str, server: str, address: str) -> list[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", client, sys.executable, "-c", _DHCP_CLIENT,
         str(kind), mac, server, address],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return done.stdout.split()


@pytest.fixture
async def readable_driver(namespace: str) -> AsyncIterator[BridgeNetwork]:
    """The driver, its files where dnsmasq (which drops to `nobody`) reads its entries:
    not under pytest's own directory, which only root may enter."""
    with tempfile.TemporaryDirectory(prefix="oh-dhcp-", dir="/tmp") as run:
        os.chmod(run, 0o755)
        settings = NetworkSettings(mode="bridge", namespace=namespace, lease_seconds=120)
        pool = AddressPool.parse(
            settings.pool_subnet, settings.pool_gateway, settings.pool_nameservers,
            settings.pool_range,
        )  # fmt: skip
        network = BridgeNetwork(settings, pool, Path(run) / "network")
        yield network
        await network.dhcp.stop()


async def test_dnsmasq_answers_its_own_guests_only_not_nak_another_hosts(
    readable_driver: BridgeNetwork, namespace: str
) -> None:
    """The public bridge is the provider's L2: every host's dnsmasq hears every guest's
    broadcasts. This host's answers its own guests, and stays silent to a guest selecting
    another host's offer (an authoritative dnsmasq NAKed it, "wrong server-ID", and the
    guest, hearing that before its host's ACK, started over: cluster DHCP failed at random)."""
    driver = readable_driver
    await driver.start()
    await driver.attach([NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.10")])
    with network_namespace() as client:
        for command in (
            ["link", "add", "ohdhcp0", "netns", namespace, "type", "veth",
             "peer", "name", "eth0", "netns", client],
            ["-n", namespace, "link", "set", "ohdhcp0", "master", "oh-public", "up"],
            ["-n", client, "addr", "add", "192.0.2.252/24", "dev", "eth0"],
            ["-n", client, "link", "set", "eth0", "up"],
        ):  # fmt: skip
            subprocess.run(["ip", *command], check=True, timeout=10)
        # Its own guest: offered and acknowledged (this host is the gateway, 192.0.2.1).
        assert dhcp_answers(client, DISCOVER, MAC_A, "0.0.0.0", "192.0.2.10") == ["2"]
        assert dhcp_answers(client, REQUEST, MAC_A, "192.0.2.1", "192.0.2.10") == ["5"]
        # Another host's guest, taking that host's offer (server 192.0.2.2): no answer.
        assert dhcp_answers(client, DISCOVER, MAC_B, "0.0.0.0", "192.0.2.11") == []
        assert dhcp_answers(client, REQUEST, MAC_B, "192.0.2.2", "192.0.2.11") == []
    await driver.detach([NicPlan(SERVER_A, 0, MAC_A, address="192.0.2.10")])
