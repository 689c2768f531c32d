"""What a hostile bridge-mode guest's frames do beyond IPv4 (network/spoof_guard.py on the
public bridge, network/bridge_fence.py at the host): real frames written into a guest's tap
of the bridge driver's real bridges, beside a peer on the public bridge (another tenant's
machine), a peer on the guest's VLAN and the host's own stack, all in namespaces this test
creates."""

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

from openhosting.network.driver import NicPlan
from tests.integration.netns_helpers import neighbour, network_namespace
from tests.network import guest_frames as f

SERVER = "0f962616-2071-4173-be79-7dd084271edf"
VLAN = "5b0e2f4c-8a61-4d3e-9f27-1c4b6d8e0a35"
MAC, ADDRESS = "52:54:00:00:00:0b", "192.0.2.11"
LINK_LOCAL = "fe80::5054:ff:fe00:b"  # MAC's own (EUI-64)
VLAN_MAC = "52:54:00:00:01:0b"
VLAN_LINK_LOCAL = "fe80::5054:ff:fe00:10b"
VLAN_PEER_MAC = "52:54:00:00:01:fe"
ROGUE_PREFIX = "2001:db8:bad::"


@dataclass
class Lab:
    namespace: str  # the host's network: bridges, taps, dnsmasq
    peer: str  # another tenant's machine on the public bridge, link ohpeer0
    vlan_peer: str  # another server of the guest's VLAN, link ohvpeer0
    public_tap: str
    vlan_tap: str
    vlan_bridge: str

    def ip(self, namespace: str, *argv: str) -> str:
        done = subprocess.run(
            ["ip", "-n", namespace, *argv], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout


@asynccontextmanager
async def lab() -> AsyncIterator[Lab]:
    with ExitStack() as cleanup:
        namespace = cleanup.enter_context(network_namespace())
        peer = cleanup.enter_context(network_namespace())
        vlan_peer = cleanup.enter_context(network_namespace())
        nics = [
            NicPlan(SERVER, 0, MAC, address=ADDRESS),
            NicPlan(SERVER, 1, VLAN_MAC, vlan=VLAN),
        ]
        async with f.bridge_driver(namespace, nics) as bridge:
            the_lab = Lab(
                namespace, peer, vlan_peer, bridge.tap_name(nics[0]), bridge.tap_name(nics[1]),
                bridge.vlan_bridge(VLAN),
            )  # fmt: skip
            f.cable(namespace, f.SETTINGS.public_bridge, peer, "ohpeer0", "52:54:00:00:00:fe")
            f.cable(namespace, the_lab.vlan_bridge, vlan_peer, "ohvpeer0", VLAN_PEER_MAC)
            await asyncio.sleep(2.5)  # past duplicate address detection of the links' fe80::
            yield the_lab


def default_routes(lab: Lab, namespace: str) -> str:
    return lab.ip(namespace, "-6", "route", "show", "default")


async def test_a_router_advertisement_from_a_public_guest_routes_neither_peers_nor_host() -> None:
    """A rogue RA is the classic man in the middle of IPv6: whoever takes it sends its IPv6
    traffic to the guest (and takes an address in the guest's prefix)."""
    async with lab() as the_lab:
        advert = f.router_advert(MAC, LINK_LOCAL, ROGUE_PREFIX)
        f.write_frames(the_lab.namespace, the_lab.public_tap, [advert])
        await asyncio.sleep(1)
        for namespace in (the_lab.peer, the_lab.namespace):
            assert default_routes(the_lab, namespace) == ""
            assert ROGUE_PREFIX not in the_lab.ip(namespace, "-6", "addr")


async def test_a_router_advertisement_from_a_vlan_guest_routes_its_vlan_but_not_the_host() -> None:
    """A VLAN is its user's own network, where a server of theirs may be the router; the
    host's bridge for it is the platform's and takes no route from a guest."""
    async with lab() as the_lab:
        advert = f.router_advert(VLAN_MAC, VLAN_LINK_LOCAL, ROGUE_PREFIX)
        f.write_frames(the_lab.namespace, the_lab.vlan_tap, [advert])
        await asyncio.sleep(1)
        assert VLAN_LINK_LOCAL in default_routes(the_lab, the_lab.vlan_peer)
        assert default_routes(the_lab, the_lab.namespace) == ""
        assert ROGUE_PREFIX not in the_lab.ip(the_lab.namespace, "-6", "addr")


async def test_a_guest_cannot_claim_a_peers_ipv6_address_to_the_host() -> None:
    async with lab() as the_lab:
        peer_link_local = "fe80::5054:ff:fe00:fe"
        ping = ["ip", "netns", "exec", the_lab.namespace, "busybox", "ping6", "-c", "1", "-W", "2",
                f"{peer_link_local}%oh-public"]  # fmt: skip
        subprocess.run(ping, check=True, timeout=10, capture_output=True)
        await asyncio.sleep(1.5)  # past the neighbour table's locktime (1 s)
        claim = f.neighbour_advert(MAC, peer_link_local, peer_link_local)
        f.write_frames(the_lab.namespace, the_lab.public_tap, [claim])
        entry = neighbour(the_lab.namespace, peer_link_local)
        assert MAC not in entry and "52:54:00:00:00:fe" in entry, entry


async def test_what_reaches_peers_and_the_host_from_a_public_guest() -> None:
    async with lab() as the_lab:
        peer_link_local = "fe80::5054:ff:fe00:fe"
        frames = {
            # Itself: a neighbour solicitation for the peer's address, from its own.
            "own": f.neighbour_solicit(MAC, LINK_LOCAL, peer_link_local, b"own"),
            "dad": f.neighbour_solicit(MAC, "::", LINK_LOCAL, b"dad"),
            "dad-of-peer": f.neighbour_solicit(MAC, "::", peer_link_local, b"dad-of-peer"),
            "from-peer-address": f.neighbour_solicit(
                MAC, peer_link_local, "fe80::1", b"from-peer-address"
            ),
            "from-other-mac": f.neighbour_solicit(
                "52:54:00:00:00:fe", LINK_LOCAL, "fe80::1", b"from-other-mac"
            ),
            "dhcpv6-server": f.dhcpv6_reply(MAC, LINK_LOCAL, b"dhcpv6-server"),
            "dhcp-server": f.dhcp_offer(MAC, ADDRESS, "192.0.2.99", b"dhcp-server"),
            "dot1q": f.tagged(0x8100, 100, f.dhcp_offer(MAC, ADDRESS, "192.0.2.98", b"dot1q")),
            "dot1ad": f.tagged(
                0x88A8, 100, f.neighbour_solicit(MAC, LINK_LOCAL, "fe80::1", b"dot1ad")
            ),
            "bpdu": f.spanning_tree_bpdu(MAC, b"bpdu"),
            "lldp": f.ethernet("01:80:c2:00:00:0e", MAC, 0x88CC, b"lldp".ljust(32, b"\0")),
            "raw": f.ethernet("ff:ff:ff:ff:ff:ff", MAC, 0x88B5, b"raw".ljust(32, b"\0")),
        }
        seen = f.frames_arriving(
            (the_lab.namespace, the_lab.public_tap),
            {"peer": (the_lab.peer, "ohpeer0"), "host": (the_lab.namespace, "oh-public")},
            frames,
        )
        assert seen == {"peer": {"own", "dad"}, "host": {"own", "dad"}}


async def test_the_host_routes_nothing_that_comes_from_a_vlan() -> None:
    """A VLAN is private, and its guests unguarded: where the host forwards (it routes for
    the pool; here without reverse path filtering), a VLAN guest's packets to its bridge's
    MAC were routed to the public network, from any source address (another of the pool's
    here), IPv4 and IPv6 alike."""
    async with lab() as the_lab:
        host = the_lab.namespace
        subprocess.run(
            ["ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1",
             "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{the_lab.vlan_bridge}.rp_filter=0",
             "net.ipv6.conf.all.forwarding=1"],
            check=True, timeout=10,
        )  # fmt: skip
        the_lab.ip(the_lab.peer, "addr", "add", "192.0.2.250/24", "dev", "ohpeer0")
        the_lab.ip(the_lab.peer, "addr", "add", "2001:db8:1::250/64", "dev", "ohpeer0", "nodad")
        the_lab.ip(host, "addr", "add", "2001:db8:1::1/64", "dev", "oh-public", "nodad")
        bridge_mac = the_lab.ip(host, "-br", "link", "show", the_lab.vlan_bridge).split()[2]
        forged = [("192.0.2.77", "192.0.2.250"), ("2001:db8:1::77", "2001:db8:1::250")]
        frames = {
            "ipv4": f.ethernet(bridge_mac, VLAN_MAC, 0x0800,
                               f.ipv4(*forged[0], 17, f.udp(9, 9, b"ipv4"))),
            "ipv6": f.ethernet(bridge_mac, VLAN_MAC, 0x86DD,
                               f.ipv6(*forged[1], 17, f.udp(9, 9, b"ipv6"))),
            # To the VLAN's other server: bridged, as ever (br_netfilter shows it to the
            # forward hook too).
            "within": f.ethernet(VLAN_PEER_MAC, VLAN_MAC, 0x0800,
                                 f.ipv4("10.99.0.1", "10.99.0.2", 17, f.udp(9, 9, b"within"))),
        }  # fmt: skip
        f.write_frames(host, the_lab.vlan_tap, list(frames.values()))  # the host finds the peer
        listeners = {"peer": (the_lab.peer, "ohpeer0"), "vlan": (the_lab.vlan_peer, "ohvpeer0")}
        seen = f.frames_arriving((host, the_lab.vlan_tap), listeners, frames)
        assert seen == {"peer": set(), "vlan": {"within"}}
