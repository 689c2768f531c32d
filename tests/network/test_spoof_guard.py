"""The bridge-mode spoof guard: its nftables text (pure), and its rules loaded by the real
`nft` in a namespace this test creates. A real guest tries to spoof in
tests/integration/test_guest_spoofing.py."""

import asyncio
import struct
import subprocess

from openhosting.network.driver import NicPlan
from openhosting.network.spoof_guard import (
    GuestIdentity,
    SpoofGuard,
    chain_name,
    full_ruleset,
    guard_rules,
    link_local,
    table_name,
)
from tests.integration.netns_helpers import neighbour, network_namespace
from tests.network import guest_frames as frames

MAC, ADDRESS = "52:54:00:0A:0B:0C", "192.0.2.12"
HOST = str(frames.POOL.gateway)  # the host's address on the bridge, dnsmasq's server id
SERVER, OTHER = "0f962616-2071-4173-be79-7dd084271edf", "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7c"
VICTIM_MAC = "52:54:00:00:00:0c"


# What every public NIC is held to, by its MAC alone.
MAC_RULES = [
    "ether saddr != 52:54:00:0a:0b:0c drop",
    "ether type != { ip, arp, ip6 } drop",  # no VLAN tag, BPDU, LLDP, other protocol
    "arp saddr ether != 52:54:00:0a:0b:0c drop",
    "udp dport 67 @th,288,48 != 0x5254000a0b0c drop",  # DHCP's chaddr: itself
    "udp dport { 68, 546 } drop",  # a DHCP server's answers, v4 and v6
    # IPv6 from its MAC's link-local address only (or ::, detecting a duplicate)...
    "ip6 saddr != { ::, fe80::5054:ff:fe0a:b0c } drop",
    # ... no router's messages ...
    "icmpv6 type { nd-router-advert, nd-redirect, router-renumbering, mld-listener-query } drop",
    # ... and neighbour discovery claiming (or probing) no other address.
    "icmpv6 type nd-neighbor-advert @th,64,128 != 0xfe80000000000000505400fffe0a0b0c drop",
    "ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128"
    " != 0xfe80000000000000505400fffe0a0b0c drop",
]


def test_a_nics_ipv6_address_is_its_macs_link_local_one() -> None:
    assert link_local("52:54:00:0A:0B:0C") == "fe80::5054:ff:fe0a:b0c"
    assert link_local("00:16:3e:00:00:01") == "fe80::216:3eff:fe00:1"  # the U/L bit flipped
    assert link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"


def test_a_nic_with_an_address_sends_only_from_its_mac_and_address() -> None:
    assert guard_rules(GuestIdentity(MAC, ADDRESS)) == [
        *MAC_RULES,
        "arp saddr ip != { 0.0.0.0, 192.0.2.12 } drop",  # an ARP probe, or its address
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",  # asking DHCP for its lease
        "ip saddr != 192.0.2.12 drop",
    ]


def test_a_nic_without_an_address_claims_and_sends_from_none() -> None:
    assert guard_rules(GuestIdentity(MAC, None)) == [
        *MAC_RULES,
        "arp saddr ip != 0.0.0.0 drop",  # an ARP probe only
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
        "ip saddr != 0.0.0.0 drop",
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


def dhcp_decline_frame(source_mac: str, client_mac: str, address: str, server: str) -> bytes:
    """A broadcast DHCPDECLINE of `address` in the name of `client_mac` (its chaddr), sent
    from `source_mac` and 0.0.0.0."""
    client = bytes.fromhex(client_mac.replace(":", ""))
    bootp = struct.pack("!4BI2H4I", 1, 1, 6, 0, 0x0C0FFEE, 0, 0, 0, 0, 0, 0)
    bootp += client + bytes(10 + 64 + 128) + bytes.fromhex("63825363")
    bootp += bytes([53, 1, 4, 50, 4, *map(int, address.split("."))])
    bootp += bytes([54, 4, *map(int, server.split(".")), 255])
    packet = frames.ipv4("0.0.0.0", "255.255.255.255", 17, frames.udp(68, 67, bootp))
    return frames.ethernet("ff:ff:ff:ff:ff:ff", source_mac, 0x0800, packet)


def lease_of(namespace: str, link: str) -> str:
    """What busybox's DHCP client gets on `link` (its last line)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "busybox", "udhcpc", "-i", link, "-n", "-q",
         "-t", "3", "-T", "2", "-s", "/bin/true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).strip().splitlines()[-1]


async def test_a_guest_cannot_decline_another_guests_address_to_dnsmasq() -> None:
    """A DHCPDECLINE carrying another guest's MAC made dnsmasq refuse that guest its address
    for 10 minutes ("not using configured address ... because it was previously declined"):
    its next DHCP (a reboot, an expired lease) got none. Real dnsmasq, bridge and taps of the
    bridge driver; the victim is a machine cabled to the bridge, the attacker writes into its
    own guest's tap."""
    attacker = NicPlan(SERVER, 0, "52:54:00:00:00:0b", address="192.0.2.11")
    held = NicPlan(OTHER, 0, VICTIM_MAC, address="192.0.2.12")  # the victim's entry
    with network_namespace() as namespace, network_namespace() as victim:
        async with frames.bridge_driver(namespace, [attacker, held]) as bridge:
            frames.cable(namespace, frames.SETTINGS.public_bridge, victim, "v0", VICTIM_MAC)
            assert "lease of 192.0.2.12 obtained" in lease_of(victim, "v0")

            frame = dhcp_decline_frame(attacker.mac, VICTIM_MAC, "192.0.2.12", HOST)
            frames.write_frames(namespace, bridge.tap_name(attacker), [frame])
            await asyncio.sleep(0.5)
            assert "lease of 192.0.2.12 obtained" in lease_of(victim, "v0")


async def test_a_nic_without_an_address_claims_none_of_the_public_networks() -> None:
    """Without `nic:0:dhcp` a guest has no address on the public bridge: any it took would
    be another machine's (a guest's, the gateway's, the host's) or one the pool hands out
    next. Its gratuitous ARP for a peer's address moved the host's entry for the peer to the
    guest's MAC, and so the host's traffic to it."""
    guest = NicPlan(SERVER, 0, "52:54:00:00:00:0b", address=None, dhcp=False)
    with network_namespace() as namespace, network_namespace() as peer:
        async with frames.bridge_driver(namespace, [guest]) as bridge:
            frames.cable(namespace, frames.SETTINGS.public_bridge, peer, "v0", VICTIM_MAC)
            subprocess.run(["ip", "-n", peer, "addr", "add", "192.0.2.250/24", "dev", "v0"],
                           check=True, timeout=10)  # fmt: skip
            ping = ["busybox", "ping", "-c", "1", "-W", "2", "192.0.2.250"]
            subprocess.run(["ip", "netns", "exec", namespace, *ping], check=True, timeout=10,
                           capture_output=True)  # fmt: skip
            await asyncio.sleep(1.5)  # past the neighbour table's locktime (1 s)
            claim = frames.arp_announcement(guest.mac, "192.0.2.250")
            frames.write_frames(namespace, bridge.tap_name(guest), [claim])
            assert VICTIM_MAC in neighbour(namespace, "192.0.2.250")
