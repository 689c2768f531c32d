"""The bridge-mode spoof guard: its nftables text (pure), and its rules loaded by the real
`nft` in a namespace this test creates. A real guest tries to spoof in
tests/integration/test_guest_spoofing.py."""

import subprocess

from openhosting.network.spoof_guard import (
    GuestIdentity,
    SpoofGuard,
    chain_name,
    full_ruleset,
    guard_rules,
    table_name,
)
from tests.integration.netns_helpers import network_namespace

MAC, ADDRESS = "52:54:00:0A:0B:0C", "192.0.2.12"


def test_a_nic_with_an_address_sends_only_from_its_mac_and_address() -> None:
    assert guard_rules(GuestIdentity(MAC, ADDRESS)) == [
        "ether saddr != 52:54:00:0a:0b:0c drop",
        "arp saddr ether != 52:54:00:0a:0b:0c drop",
        "arp saddr ip != { 0.0.0.0, 192.0.2.12 } drop",  # an ARP probe, or its address
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",  # asking DHCP for its lease
        "ip saddr != 192.0.2.12 drop",
    ]


def test_a_nic_without_an_address_is_held_to_its_mac() -> None:
    assert guard_rules(GuestIdentity(MAC, None)) == [
        "ether saddr != 52:54:00:0a:0b:0c drop",
        "arp saddr ether != 52:54:00:0a:0b:0c drop",
    ]


def test_each_public_bridge_has_its_own_table_and_the_whole_table_is_replaced() -> None:
    assert table_name("oh-public") == "openhosting_guard_oh_public"
    text = full_ruleset("t", {"oh-tb": GuestIdentity(MAC, None), "oh-ta": GuestIdentity(MAC, None)})
    assert text.startswith("table bridge t\ndelete table bridge t\n")
    assert text.index('"oh-ta"') < text.index('"oh-tb"')  # sorted: the same text each time


def listing(namespace: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "ruleset", "bridge"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout


async def test_taps_are_guarded_forgotten_and_replaced_one_transaction_each() -> None:
    with network_namespace() as namespace:
        guard = SpoofGuard(namespace, "oh-public")
        await guard.guard("oh-ta0", GuestIdentity(MAC, ADDRESS))
        await guard.guard("oh-tb0", GuestIdentity("52:54:00:00:00:0b", None))
        rules = listing(namespace)
        assert "hook prerouting priority dstnat" in rules  # -300: before the bridge learns
        assert chain_name("oh-ta0") in rules and chain_name("oh-tb0") in rules
        assert "ip saddr != 192.0.2.12 drop" in rules
        await guard.guard("oh-ta0", GuestIdentity(MAC, "192.0.2.13"))  # its chain replaced
        rules = listing(namespace)
        assert "192.0.2.13" in rules and "192.0.2.12" not in rules
        await guard.unguard("oh-tb0")
        await guard.unguard("oh-tb0")  # again: harmless
        assert chain_name("oh-tb0") not in listing(namespace)
        # After a restart: exactly the running servers' taps.
        await guard.replace_all({"oh-tc0": GuestIdentity(MAC, None)})
        rules = listing(namespace)
        assert chain_name("oh-tc0") in rules and chain_name("oh-ta0") not in rules
        await guard.remove()
        await guard.remove()
        assert "openhosting_guard" not in listing(namespace)
