"""`nic:N:block` in bridge mode: the nftables text (pure), and the rules loaded by the real
`nft` on a real bridge in namespaces this test creates, with real TCP and UDP traffic: a
blocked port unreachable from another machine on the bridge and from the host, an open one
answering, the guest's own connections out untouched. A veth stands in for the tap here (a tap
needs a VM); tests/integration/test_port_blocking.py does it with a real guest."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from openhosting.model.port_block import parse_block_list
from openhosting.network.nic_firewall import (
    NicFirewall,
    chain_name,
    full_ruleset,
    remove_tap_ruleset,
    table_name,
    tap_rules,
    tap_ruleset,
)
from tests.integration.netns_helpers import answer_from, network_namespace

TABLE = "openhosting_block_oh_public"


def entries(text: str):  # type: ignore[no-untyped-def]
    return parse_block_list(text, "nic:0:block")


def test_one_table_per_platform_and_one_chain_per_tap() -> None:
    assert table_name("oh-public") == TABLE
    assert chain_name("oh-t0f962616a0") == "tap_oh_t0f962616a0"


def test_tcp_drops_only_opening_segments_and_udp_every_datagram() -> None:
    rules = tap_rules(entries("tcp/22 25 udp/53 8000-8100 tcp/8050-9000"))
    assert rules == [
        "tcp dport { 22, 25, 8000-9000 } tcp flags & (syn | ack) == syn drop",
        "udp dport { 25, 53, 8000-8100 } drop",
    ]
    assert tap_rules(entries("udp/53")) == ["udp dport { 53 } drop"]
    assert tap_rules(()) == []


def test_a_tap_change_is_one_transaction_that_keeps_the_other_taps() -> None:
    text = tap_ruleset(TABLE, "oh-t1", entries("tcp/22"))
    lines = text.splitlines()
    assert lines[0] == f"add table bridge {TABLE}"
    # Frames leaving the bridge to a tap: forwarded (uplink, other guests) and the host's own.
    assert f"add rule bridge {TABLE} forward oifname vmap @taps" in lines
    assert f"add rule bridge {TABLE} output oifname vmap @taps" in lines
    assert f"flush chain bridge {TABLE} tap_oh_t1" in lines
    assert f'add element bridge {TABLE} taps {{ "oh-t1" : jump tap_oh_t1 }}' in lines
    assert "delete table" not in text and "flush table" not in text
    # Nothing blocked: the tap's chain and element go (made first, so never missing).
    emptied = tap_ruleset(TABLE, "oh-t1", ())
    assert emptied.endswith(
        f'add element bridge {TABLE} taps {{ "oh-t1" : jump tap_oh_t1 }}\n'
        f'delete element bridge {TABLE} taps {{ "oh-t1" }}\n'
        f"delete chain bridge {TABLE} tap_oh_t1\n"
    )
    assert remove_tap_ruleset(TABLE, "oh-t1") == emptied


def test_the_full_ruleset_replaces_the_table_with_exactly_the_blocking_taps() -> None:
    text = full_ruleset(TABLE, {"oh-tb": entries("udp/53"), "oh-ta": entries("tcp/22"), "x": ()})
    assert text.startswith(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    assert text.index("tap_oh_ta") < text.index("tap_oh_tb")
    assert "tap_x" not in text


# -- real nftables, real bridge, real traffic ---------------------------------------------

BRIDGE, TAP = "oh-public", "oh-tguest0"
HOST, GUEST, PEER = "192.0.2.1", "192.0.2.20", "192.0.2.30"
LISTENER = """\
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen()
    while True:
        s.accept()[0].sendall(b"hello")
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(b"hello", peer)
for port in map(int, sys.argv[1:]):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=10)


@dataclass
class Wiring:
    platform: str  # the namespace of the bridge and the rules (the host)
    guest: str
    peer: str


def cable(platform: str, other: str, port: str, address: str) -> None:
    """A veth from namespace `other` (as eth0, `address`) to `port` on the bridge."""
    run("ip", "link", "add", "eth0", "netns", other, "type", "veth", "peer", "name", port,
        "netns", platform)  # fmt: skip
    run("ip", "-n", platform, "link", "set", port, "master", BRIDGE, "up")
    run("ip", "-n", other, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "-n", other, "link", "set", "eth0", "up")


@pytest.fixture
def wiring() -> Iterator[Wiring]:
    with ExitStack() as stack:
        names = [stack.enter_context(network_namespace()) for _ in range(3)]
        platform, guest, peer = names
        run("ip", "-n", platform, "link", "add", BRIDGE, "type", "bridge")
        run("ip", "-n", platform, "addr", "add", f"{HOST}/24", "dev", BRIDGE)
        run("ip", "-n", platform, "link", "set", BRIDGE, "up")
        cable(platform, guest, TAP, GUEST)
        cable(platform, peer, "ohpeer1", PEER)
        yield Wiring(platform, guest, peer)


@pytest.fixture
def listening(wiring: Wiring) -> Iterator[None]:
    """TCP and UDP servers saying hello on ports 22, 53 and 8080 in the guest and the peer
    (killed afterwards)."""
    argv = [sys.executable, "-c", LISTENER, "22", "53", "8080"]
    servers = [
        subprocess.Popen(["ip", "netns", "exec", where, *argv], stdout=subprocess.PIPE, text=True)
        for where in (wiring.guest, wiring.peer)
    ]
    try:
        for server in servers:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()


def answer(namespace: str, kind: str, address: str, port: int) -> str:
    return answer_from(namespace, kind, address, port)


async def test_blocked_ports_are_unreachable_from_the_bridge_and_the_host_and_open_ones_answer(
    wiring: Wiring, listening: None
) -> None:
    firewall = NicFirewall(wiring.platform, BRIDGE)
    assert answer(wiring.peer, "tcp", GUEST, 22) == "hello"  # nothing blocked yet
    await firewall.block(TAP, entries("tcp/22 udp/53"))
    for where in (wiring.peer, wiring.platform):  # another machine, and the host itself
        assert answer(where, "tcp", GUEST, 22) == "TimeoutError"
        assert answer(where, "udp", GUEST, 53) == "TimeoutError"
        assert answer(where, "tcp", GUEST, 8080) == "hello"
        assert answer(where, "udp", GUEST, 22) == "hello"  # tcp/22 leaves UDP 22 open
        assert answer(where, "tcp", GUEST, 53) == "hello"
    # The guest's own connections out are untouched, even from a port it blocks.
    await firewall.block(TAP, entries("tcp/1-65535"))
    assert answer(wiring.peer, "tcp", GUEST, 8080) == "TimeoutError"
    assert answer(wiring.guest, "tcp", PEER, 8080) == "hello"
    assert answer(wiring.guest, "udp", PEER, 53) == "hello"

    # A change replaces the list at once; a bare port blocks both protocols.
    await firewall.block(TAP, entries("8080"))
    assert answer(wiring.peer, "tcp", GUEST, 22) == "hello"
    assert answer(wiring.peer, "tcp", GUEST, 8080) == "TimeoutError"
    assert answer(wiring.peer, "udp", GUEST, 8080) == "TimeoutError"

    # Another tap's list is its own; unblocking one tap leaves the rest.
    await firewall.block("oh-tother0", entries("tcp/1-65535"))
    await firewall.unblock(TAP)
    await firewall.unblock(TAP)  # idempotent
    assert answer(wiring.peer, "tcp", GUEST, 8080) == "hello"
    listed = subprocess.run(
        ["ip", "netns", "exec", wiring.platform, "nft", "list", "table", "bridge", TABLE],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert "tap_oh_tother0" in listed and "tap_oh_tguest0" not in listed

    # After a daemon restart: exactly what running servers ask, the rest gone.
    await firewall.replace_all({TAP: entries("tcp/8080")})
    assert answer(wiring.peer, "tcp", GUEST, 8080) == "TimeoutError"
    listed = subprocess.run(
        ["ip", "netns", "exec", wiring.platform, "nft", "list", "table", "bridge", TABLE],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert "tap_oh_tother0" not in listed

    await firewall.remove()
    await firewall.remove()  # idempotent
    assert answer(wiring.peer, "tcp", GUEST, 8080) == "hello"
