"""VLANs across hosts: each VLAN is one VXLAN segment, a kernel `vxlan` device in the VLAN's
bridge on every host that has a server on it.

A VLAN's VNI is the database's (`resources.vni`, store/vnis.py: unique, kept for the VLAN's
life), given to the driver in the NIC's plan; the hash of its UUID (`vni_of`) is its first
choice there, and what a plan without one uses. The device learns no addresses: frames for a
destination it does not know (and broadcasts, multicast) are copied to each host of the
VLAN's flood list (head-end replication by all-zeros forwarding entries; the list is the other
online hosts that run a server of that VLAN, from the database, or `network.vxlan_peers` while
the hosts table knows no other host), and the bridge on the other host delivers them.
The guest never sees the underlay: only the VLAN's frames, 50 bytes smaller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from openhosting.config import NetworkSettings
from openhosting.network.errors import NetworkError
from openhosting.network.links import Links, check_ifname, run_command
from openhosting.reverter import Reverter

VNI_COUNT = 1 << 24  # VXLAN's 24-bit network identifier; 0 is left unused
# An outer IPv4 (20), UDP (8) and VXLAN (8) header and the inner Ethernet header (14).
OVERHEAD = 50
# The VLANs' MTU when no underlay device is named to take it from (a 1500-byte underlay).
DEFAULT_MTU = 1500 - OVERHEAD
# The forwarding entry of frames no other entry places: broadcasts, multicast, unknown MACs.
FLOOD_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
BRIDGE_BINARY = "bridge"

log = logging.getLogger("openhosting.network")


def vni_of(vlan: str) -> int:
    """The VNI of the VLAN with UUID `vlan`: a hash of the UUID into 1..2^24-1, the same on
    every host (a UUID in any spelling gives one VNI)."""
    digest = hashlib.sha256(uuid.UUID(vlan).bytes).digest()
    return int.from_bytes(digest[:4], "big") % (VNI_COUNT - 1) + 1


class UnderlayError(ValueError):
    """The `network.vxlan_*` settings are invalid (the daemon does not start)."""


@dataclass(frozen=True)
class Underlay:
    """How this host reaches the others' VXLAN devices (see `network.vxlan_*` in config.py)."""

    local: IPv4Address
    port: int
    device: str
    peers: tuple[IPv4Address, ...]


def underlay_address(text: str) -> IPv4Address:
    """`text` as a host's underlay address, or ValueError saying why it cannot be one (not
    IPv4, or not a host's unicast address)."""
    try:
        address = IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    # 240/4, 255.255.255.255 among them (`is_reserved`), is no host's either: the other hosts
    # would send their VLANs' frames to the whole underlay, or nowhere.
    if address.is_multicast or address.is_unspecified or address.is_loopback or address.is_reserved:
        raise ValueError(f"{address} is not a host's unicast address")
    return address


def _unicast(setting: str, text: str) -> IPv4Address:
    try:
        return underlay_address(text)
    except ValueError as error:
        raise UnderlayError(f"network.{setting}: {error}") from None


def parse_underlay(settings: NetworkSettings) -> Underlay | None:
    """The underlay the settings describe; None when VXLAN is off (`vxlan_local` empty)."""
    if not settings.vxlan_local:
        if settings.vxlan_peers.strip() or settings.vxlan_device:
            raise UnderlayError("network.vxlan_peers and vxlan_device need network.vxlan_local")
        return None
    local = _unicast("vxlan_local", settings.vxlan_local)
    peers = tuple(dict.fromkeys(_unicast("vxlan_peers", p) for p in settings.vxlan_peers.split()))
    if local in peers:
        raise UnderlayError(f"network.vxlan_peers lists this host's own address {local}")
    if not 0 < settings.vxlan_port < 1 << 16:
        raise UnderlayError(f"network.vxlan_port {settings.vxlan_port} is not a UDP port")
    try:
        device = check_ifname(settings.vxlan_device) if settings.vxlan_device else ""
    except NetworkError as error:
        raise UnderlayError(f"network.vxlan_device: {error}") from None
    return Underlay(local=local, port=settings.vxlan_port, device=device, peers=peers)


def bridge_argv(namespace: str, *args: str) -> list[str]:
    """The `bridge` command line for `args`, in `namespace` when one is given."""
    return [BRIDGE_BINARY, *(("-n", namespace) if namespace else ()), *args]


class VxlanSegments:
    """The VXLAN devices of one host's VLAN bridges, in the namespace of `links`."""

    def __init__(self, links: Links, underlay: Underlay) -> None:
        self._links = links
        self.underlay = underlay
        # Until the hosts table tells the flood lists, every device floods to the
        # configured peers (`network.vxlan_peers`).
        self._configured = True
        self._lists: dict[str, tuple[IPv4Address, ...]] = {}  # by device name
        # The MACs of the VLAN's guests on other hosts → their host, by device name.
        self._macs: dict[str, dict[str, IPv4Address]] = {}

    def peers_of(self, name: str) -> tuple[IPv4Address, ...]:
        """Where device `name` floods: its VLAN's flood list (none known: nowhere), or the
        configured peers."""
        return self.underlay.peers if self._configured else self._lists.get(name, ())

    def set_peers(self, lists: Mapping[str, Sequence[str]] | None) -> Collection[str] | None:
        """Flood from the next `ensure` or `flood` on: each device named in `lists` (by
        device name) to its addresses (the other online hosts running a server of its VLAN);
        a device not named keeps its list; `lists` None: every device to
        `network.vxlan_peers` (the hosts table knows no other host). This host's own address
        and what is no host's unicast address are left out. The devices whose list changed;
        None: every device's may have."""
        if lists is None:
            changed = not self._configured
            self._configured, self._lists = True, {}
            return None if changed else ()
        was_configured, self._configured = self._configured, False
        changed_names: set[str] = set()
        for name, texts in lists.items():
            chosen = self._chosen(texts)
            if set(chosen) != set(self._lists.get(name, ())):
                changed_names.add(name)
            self._lists[name] = chosen
        return None if was_configured else changed_names

    def set_macs(self, macs: Mapping[str, Mapping[str, str]]) -> set[str]:
        """Unicast from the next `ensure` or `flood` on: each device named in `macs` (by
        device name) sends a frame for one of those MACs (its VLAN's guests on other hosts)
        to that MAC's host alone, not to its whole flood list; a device not named keeps its
        entries. Malformed MACs, this host's own address and what is no host's unicast
        address are left out. The devices whose entries changed."""
        changed: set[str] = set()
        for name, entries in macs.items():
            chosen: dict[str, IPv4Address] = {}
            for mac, text in entries.items():
                try:
                    address = _unicast("vxlan_peers", text)
                except UnderlayError as error:
                    log.warning("event=vxlan_mac_ignored mac=%s error=%s", mac, error)
                    continue
                if _MAC.fullmatch(mac.lower()) and address != self.underlay.local:
                    chosen[mac.lower()] = address
            if chosen != self._macs.get(name, {}):
                changed.add(name)
            self._macs[name] = chosen
        return changed

    def forget(self, name: str) -> None:
        """Device `name` is gone: its list and entries with it (its VLAN's next device gets
        fresh ones)."""
        self._lists.pop(name, None)
        self._macs.pop(name, None)

    def _chosen(self, texts: Sequence[str]) -> tuple[IPv4Address, ...]:
        chosen: list[IPv4Address] = []
        for text in texts:
            try:
                address = _unicast("vxlan_peers", text)
            except UnderlayError as error:
                log.warning("event=vxlan_peer_ignored error=%s", error)
                continue
            if address != self.underlay.local and address not in chosen:
                chosen.append(address)
        return tuple(chosen)

    async def ensure(self, name: str, vni: int, bridge: str) -> None:
        """Device `name` carries VNI `vni` as a port of `bridge`, up, flooding to its VLAN's
        hosts: made if missing, replaced if it carries another VNI or underlay address (the
        settings changed), its flood list set to exactly the one known now (`peers_of`)."""
        underlay = self.underlay
        wanted = (vni, str(underlay.local), underlay.port)
        present = await self._links.vxlan_of(name)
        if present is not None and present != wanted:
            await self._links.delete(name)
            present = None
        async with Reverter() as revert:
            if present is None:
                mtu = 0 if underlay.device else DEFAULT_MTU  # the kernel's: the device's - 50
                try:
                    await self._links.add_vxlan(
                        name, vni, str(underlay.local), underlay.port, underlay.device, mtu
                    )
                except NetworkError as error:
                    if "VNI already exists" in str(error):
                        # Two VLANs hashed to one VNI: never join their segments.
                        raise NetworkError(
                            f"VNI {vni} of VLAN bridge {bridge} is already another VLAN's"
                            " on this host"
                        ) from None
                    raise
                revert.add(functools.partial(self._links.delete, name))
            await self.flood(name)
            await self._links.set_master(name, bridge)
            revert.success()

    async def flood(self, name: str) -> None:
        """Device `name`'s flood list is exactly the one known now (`peers_of`), and its
        entries of remote guests' MACs exactly those of `set_macs`."""
        namespace = self._links.namespace
        shown = await run_command(bridge_argv(namespace, "-j", "fdb", "show", "dev", name))
        # The device's own entries have a destination; the bridge's (learned) have none.
        entries = [e for e in json.loads(shown or "[]") if "dst" in e and "mac" in e]
        present = {entry["dst"] for entry in entries if entry["mac"] == FLOOD_MAC}
        await self._unicast_entries(name, {e["mac"]: e["dst"] for e in entries})
        wanted = {str(peer) for peer in self.peers_of(name)}
        for peer in sorted(wanted - present):
            await run_command(
                bridge_argv(namespace, "fdb", "append", FLOOD_MAC, "dev", name, "dst", peer)
            )
        for gone in sorted(present - wanted):
            await run_command(
                bridge_argv(namespace, "fdb", "del", FLOOD_MAC, "dev", name, "dst", gone)
            )

    async def _unicast_entries(self, name: str, present: Mapping[str, str]) -> None:
        """Device `name`'s entries of single MACs (`present`, MAC → destination, the flood
        entry among them) made exactly those of `set_macs`."""
        namespace = self._links.namespace
        wanted = {mac: str(address) for mac, address in self._macs.get(name, {}).items()}
        for mac, dst in sorted(wanted.items()):
            if present.get(mac) != dst:
                await run_command(bridge_argv(namespace, "fdb", "replace", mac, "dev", name,
                                              "dst", dst))  # fmt: skip
        for mac, dst in sorted(present.items()):
            if mac != FLOOD_MAC and mac not in wanted:
                await run_command(bridge_argv(namespace, "fdb", "del", mac, "dev", name,
                                              "dst", dst))  # fmt: skip
