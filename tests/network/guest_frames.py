"""A hostile guest's frames, written byte by byte, and the two ends that move them: a writer
into a guest's tap (as its QEMU would write) and a listener on a link that says which of them
arrived; and the bridge driver whose taps they are written into, with machines cabled to its
bridges. Run inside network namespaces the tests create; nothing leaves them."""

import ipaddress
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from openhosting.config import NetworkSettings
from openhosting.network.bridge_mode import BridgeNetwork
from openhosting.network.driver import NicPlan
from openhosting.network.pool import AddressPool

SETTINGS = NetworkSettings()
POOL = AddressPool.parse(
    SETTINGS.pool_subnet, SETTINGS.pool_gateway, SETTINGS.pool_nameservers, SETTINGS.pool_range
)

# Writes frames (hex) into a tap, as the guest's QEMU would, each 3 times.
TAP_WRITER = """\
import fcntl, os, struct, sys, time
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TAP | IFF_NO_PI))
time.sleep(1)  # the tap has a carrier once opened: its bridge port forwards from then
for _ in range(3):
    for frame in sys.argv[2:]:
        os.write(fd, bytes.fromhex(frame))
    time.sleep(0.2)
"""

# Prints, one a line, the markers (argv[3:], hex) found in frames that reach link argv[1]
# within argv[2] seconds.
LISTENER = """\
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
markers = {bytes.fromhex(m): m for m in sys.argv[3:]}
seen, deadline = set(), time.monotonic() + float(sys.argv[2])
print("listening", flush=True)
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        frame = s.recv(65535)
    except TimeoutError:
        break
    seen.update(name for marker, name in markers.items() if marker in frame)
print("\\n".join(sorted(seen)), flush=True)
"""


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ethernet(destination: str, source: str, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(destination) + mac_bytes(source) + struct.pack("!H", ethertype) + payload


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(source: str, destination: str, protocol: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, protocol, 0,
        ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed,
    )  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(source: str, destination: str, next_header: int, payload: bytes) -> bytes:
    """An IPv6 packet (hop limit 255, as neighbour discovery requires) whose upper-layer
    checksum, at bytes 2-3 (ICMPv6) or 6-7 (UDP) of `payload`, is filled in."""
    src, dst = ipaddress.IPv6Address(source).packed, ipaddress.IPv6Address(destination).packed
    pseudo = src + dst + struct.pack("!I3xB", len(payload), next_header)
    at = {58: 2, 17: 6}[next_header]
    total = checksum(pseudo + payload)
    payload = payload[:at] + struct.pack("!H", total) + payload[at + 2 :]
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, 255) + src + dst + payload


def udp(source_port: int, destination_port: int, data: bytes) -> bytes:
    return struct.pack("!4H", source_port, destination_port, 8 + len(data), 0) + data


def multicast_mac(address: str) -> str:
    """The Ethernet address of an IPv6 multicast `address` (33:33 and its last 32 bits)."""
    return "33:33:" + ":".join(f"{b:02x}" for b in ipaddress.IPv6Address(address).packed[12:])


def experimental_option(marker: bytes) -> bytes:
    """A neighbour discovery option of the type kept for experiments (253, RFC 4727)
    carrying `marker`: receivers ignore it, and a listener finds the frame by it."""
    if not marker:
        return b""
    length = (len(marker) + 2 + 7) // 8
    return bytes([253, length]) + marker.ljust(8 * length - 2, b"\0")


def router_advert(mac: str, source: str, prefix: str, marker: bytes = b"") -> bytes:
    """A Router Advertisement to all nodes: `source` is a default router for 1800 s and
    `prefix` (a /64) is on the link, for addresses of their own (SLAAC)."""
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    body += bytes([1, 1]) + mac_bytes(mac)  # source link-layer address
    body += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
    body += ipaddress.IPv6Address(prefix).packed + experimental_option(marker)
    return ethernet("33:33:00:00:00:01", mac, 0x86DD, ipv6(source, "ff02::1", 58, body))


def neighbour_advert(mac: str, source: str, target: str, marker: bytes = b"") -> bytes:
    """An unsolicited Neighbour Advertisement to all nodes: `target` is at `mac`, overriding
    what they knew (the O flag)."""
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.IPv6Address(target).packed
    body += bytes([2, 1]) + mac_bytes(mac)  # target link-layer address
    body += experimental_option(marker)
    return ethernet("33:33:00:00:00:01", mac, 0x86DD, ipv6(source, "ff02::1", 58, body))


def neighbour_solicit(mac: str, source: str, target: str, marker: bytes = b"") -> bytes:
    """A Neighbour Solicitation for `target`, to its solicited-node group."""
    group = "ff02::1:ff" + ipaddress.IPv6Address(target).exploded[-7:]
    body = struct.pack("!BBHI", 135, 0, 0, 0) + ipaddress.IPv6Address(target).packed
    if source != "::":  # a duplicate address probe (from ::) carries no link-layer address
        body += bytes([1, 1]) + mac_bytes(mac)
    body += experimental_option(marker)
    return ethernet(multicast_mac(group), mac, 0x86DD, ipv6(source, group, 58, body))


def dhcpv6_reply(mac: str, source: str, marker: bytes) -> bytes:
    """A DHCPv6 Advertise, as a server sends it to the clients' port 546."""
    message = bytes([2, 0x0C, 0x0F, 0xEE]) + marker
    packet = ipv6(source, "ff02::1", 17, udp(547, 546, message))
    return ethernet("33:33:00:00:00:01", mac, 0x86DD, packet)


def dhcp_offer(mac: str, source: str, offered: str, marker: bytes = b"") -> bytes:
    """A broadcast DHCPOFFER of `offered`, from a server at `source`, to the clients' port 68."""
    bootp = struct.pack("!4BI2H", 2, 1, 6, 0, 0x0C0FFEE, 0, 0x8000)
    bootp += bytes(4) + ipaddress.IPv4Address(offered).packed + bytes(8 + 16 + 64)
    bootp += marker.ljust(128, b"\0")  # in the boot file's name
    bootp += bytes.fromhex("63825363") + bytes([53, 1, 2, 255])
    packet = ipv4(source, "255.255.255.255", 17, udp(67, 68, bootp))
    return ethernet("ff:ff:ff:ff:ff:ff", mac, 0x0800, packet)


def arp_announcement(mac: str, claimed: str) -> bytes:
    """A broadcast ARP reply: `claimed` is at `mac` (a gratuitous ARP)."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac_bytes(mac)
    body += ipaddress.IPv4Address(claimed).packed + mac_bytes("ff:ff:ff:ff:ff:ff")
    body += ipaddress.IPv4Address(claimed).packed
    return ethernet("ff:ff:ff:ff:ff:ff", mac, 0x0806, body)


def tagged(tpid: int, vlan: int, inner: bytes) -> bytes:
    """`inner` (an Ethernet frame) with an 802.1Q (0x8100) or 802.1ad (0x88a8) tag."""
    return inner[:12] + struct.pack("!HH", tpid, vlan) + inner[12:]


def spanning_tree_bpdu(mac: str, marker: bytes = b"") -> bytes:
    """A configuration BPDU claiming the root of the spanning tree (priority 0): 802.3 length
    and LLC, no ethertype."""
    bpdu = struct.pack("!HBBB", 0, 0, 0, 0) + bytes(2) + mac_bytes(mac) + bytes(4)
    bpdu += bytes(2) + mac_bytes(mac) + struct.pack("!H4H", 0x8001, 0, 20 * 256, 2 * 256, 15 * 256)
    bpdu += marker
    llc = bytes([0x42, 0x42, 0x03])
    return ethernet("01:80:c2:00:00:00", mac, len(llc + bpdu), llc + bpdu)


def write_frames(namespace: str, tap: str, frames: list[bytes]) -> None:
    """Write `frames` into `tap` (in `namespace`) as its guest would, each 3 times."""
    subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", TAP_WRITER, tap,
         *(frame.hex() for frame in frames)],
        check=True, timeout=20,
    )  # fmt: skip


def frames_arriving(
    writer: tuple[str, str], listeners: dict[str, tuple[str, str]], frames: dict[str, bytes]
) -> dict[str, set[str]]:
    """Which of `frames` (by name; each must carry its name inside, as a marker) reach each of
    `listeners` (name: namespace, link) when written into the tap `writer` (namespace, tap)."""
    started = {}
    for name, (namespace, link) in listeners.items():
        argv = [sys.executable, "-c", LISTENER, link, "4", *(n.encode().hex() for n in frames)]
        started[name] = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv], stdout=subprocess.PIPE, text=True
        )
    try:
        for process in started.values():
            assert process.stdout is not None and process.stdout.readline() == "listening\n"
        write_frames(*writer, list(frames.values()))
        seen = {}
        for name, process in started.items():
            out, _ = process.communicate(timeout=15)
            seen[name] = set(out.split())  # the markers, in hex
        return {
            name: {n for n in frames if n.encode().hex() in lines} for name, lines in seen.items()
        }
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@asynccontextmanager
async def bridge_driver(namespace: str, nics: Sequence[NicPlan]) -> AsyncIterator[BridgeNetwork]:
    """The bridge driver in `namespace` (its public bridge, dnsmasq, taps) with `nics`
    attached; all of it gone after."""
    # dnsmasq runs as nobody: its directory must be reachable (pytest's tmp_path is not).
    run = Path(tempfile.mkdtemp(prefix="ohn-", dir="/tmp"))
    try:
        run.chmod(0o755)
        settings = NetworkSettings(mode="bridge", namespace=namespace, lease_seconds=120)
        bridge = BridgeNetwork(settings, POOL, run / "network")
        try:
            await bridge.attach(nics)
            yield bridge
        finally:
            await bridge.detach(nics)
            await bridge.close(idle=True)
            await bridge.dhcp.stop()
    finally:
        shutil.rmtree(run, ignore_errors=True)


def cable(namespace: str, bridge: str, inside: str, link: str, mac: str) -> None:
    """A machine on `bridge` (in `namespace`): a veth whose end `link` (with `mac`) is in
    namespace `inside`, up; its bridge's end is `link` with its last character made 1."""
    end = link[:-1] + "1"
    subprocess.run(
        ["ip", "link", "add", link, "netns", inside, "address", mac, "type", "veth",
         "peer", "name", end, "netns", namespace],
        check=True, timeout=10,
    )  # fmt: skip
    subprocess.run(["ip", "-n", namespace, "link", "set", end, "master", bridge, "up"],
                   check=True, timeout=10)  # fmt: skip
    subprocess.run(["ip", "-n", inside, "link", "set", link, "up"], check=True, timeout=10)
