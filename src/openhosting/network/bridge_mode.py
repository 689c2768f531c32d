"""Bridge-mode networking: a public bridge carrying the address pool with one dnsmasq, one
bridge per VLAN, one tap per NIC; all of it in a network namespace when one is configured.

This kernel has no 802.1Q interfaces or VLAN-filtering bridges, so a VLAN is a bridge of its
own on the host; with an underlay configured (`network.vxlan_*`) the bridge also holds the
VLAN's VXLAN device, which carries it to the other hosts (see vxlan.py). Taps are made before
QEMU starts and removed after it ends; a VLAN bridge, and its VXLAN device, live while a tap
is on it. Every link made
here is marked (see `links.LINK_MARKER`); the public bridge is left alone when an operator
made it. One lock serialises every change, so a VLAN bridge is never removed while another
server is being attached to it. The inbound ports a NIC blocks (`nic:N:block`) are dropped
on its tap (see nic_firewall.py); what a public NIC's guest sends from another MAC or address
is dropped as it comes in (see spoof_guard.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from collections.abc import Collection, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from openhosting.config import NetworkSettings
from openhosting.network.bridge_fence import BridgeFence
from openhosting.network.dnsmasq import DhcpServer, DhcpSpec
from openhosting.network.driver import Backend, NicPlan
from openhosting.network.links import IFNAMSIZ, Counters, Link, Links, check_ifname
from openhosting.network.netdevs import TapNetdev
from openhosting.network.nic_firewall import NicFirewall
from openhosting.network.pool import AddressPool, PoolError
from openhosting.network.spoof_guard import GuestIdentity, SpoofGuard
from openhosting.network.vnc_overlay import VncOverlay
from openhosting.network.vxlan import VxlanSegments, parse_underlay, vni_of
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.network")


def _hex(uuid: str) -> str:
    return uuid.replace("-", "")


def identity_of(nic: NicPlan) -> GuestIdentity:
    """What the guest may send as on a public NIC (spoof_guard.py)."""
    return GuestIdentity(nic.mac, nic.address)


class BridgeNetwork:
    """The bridge-mode driver (see `NetworkDriver`)."""

    mode = "bridge"
    pool_for_auto = True

    def __init__(self, settings: NetworkSettings, pool: AddressPool, run_dir: Path) -> None:
        self.namespace = settings.namespace
        self._links = Links(settings.namespace)
        self._public = check_ifname(settings.public_bridge)
        self._vlan_prefix = settings.vlan_bridge_prefix
        self._tap_prefix = settings.tap_prefix
        self._vxlan_prefix = settings.vxlan_prefix
        # At least 8 hex digits of a UUID in every name, so that names do not collide.
        prefixes = (
            (self._vlan_prefix, IFNAMSIZ),
            (self._tap_prefix, IFNAMSIZ - 1),
            (self._vxlan_prefix, IFNAMSIZ),
        )
        for prefix, room in prefixes:
            if len(prefix) > room - 8 or not prefix:
                raise PoolError(f"link name prefix {prefix!r} is empty or too long")
        # A link's kind is told by its name's prefix: no prefix may begin another.
        for prefix, _ in prefixes:
            for other, _ in prefixes:
                if prefix is not other and other.startswith(prefix):
                    raise PoolError(f"link name prefix {other!r} begins with {prefix!r}")
        underlay = parse_underlay(settings)
        self._vxlan = None if underlay is None else VxlanSegments(self._links, underlay)
        host = IPv4Address(settings.host_address or str(pool.gateway))
        if host not in pool.subnet or host in pool:
            raise PoolError(f"host address {host} must be in {pool.subnet}, outside the range")
        self.vnc_address: str | None = str(host)
        self._host_cidr = f"{host}/{pool.subnet.prefixlen}"
        self._directory = run_dir
        self._dhcp = DhcpServer(
            DhcpSpec(
                bridge=self._public,
                directory=run_dir / self._public,
                pool=pool,
                lease_seconds=settings.lease_seconds,
                namespace=settings.namespace,
                binary=settings.dnsmasq_binary,
            )
        )
        self._lock = asyncio.Lock()
        self._vnc = VncOverlay(settings.namespace, self._public)
        self._fence = BridgeFence(
            settings.namespace, self._public, self._tap_prefix, self._vlan_prefix
        )
        self._firewall = NicFirewall(settings.namespace, self._public)
        self._guard = SpoofGuard(settings.namespace, self._public)

    @property
    def dhcp(self) -> DhcpServer:
        return self._dhcp

    # -- names ---------------------------------------------------------------------------

    def vlan_bridge(self, vlan: str) -> str:
        return self._vlan_prefix + _hex(vlan)[: IFNAMSIZ - len(self._vlan_prefix)]

    def vxlan_device(self, vlan: str) -> str:
        return self._vxlan_prefix + _hex(vlan)[: IFNAMSIZ - len(self._vxlan_prefix)]

    def tap_name(self, nic: NicPlan) -> str:
        room = IFNAMSIZ - len(self._tap_prefix) - 1
        return f"{self._tap_prefix}{_hex(nic.server)[:room]}{nic.index}"

    def bridge_of(self, nic: NicPlan) -> str:
        return self._public if nic.vlan is None else self.vlan_bridge(nic.vlan)

    @staticmethod
    def entry_name(nic: NicPlan) -> str:
        return f"{nic.server}-{nic.index}"

    def _is_our_tap(self, name: str, ours: bool) -> bool:
        return ours and name.startswith(self._tap_prefix) and name != self._public

    def guest_address(self, nic: NicPlan) -> str | None:
        return nic.address

    # -- lifecycle -----------------------------------------------------------------------

    async def _ensure_public(self) -> None:
        await self._links.ensure_namespace()
        await self._links.ensure_bridge(self._public, self._host_cidr)
        # Before any tap: a guest never meets a host without the fence.
        await self._fence.ensure()
        await self._dhcp.ensure_running()

    async def open_vnc(self, guest: str, port: int) -> bool:
        async with self._lock:
            await self._ensure_public()
        assert self.vnc_address is not None
        await self._vnc.open(guest, self.vnc_address, port)
        return True

    async def close_vnc(self, guest: str) -> None:
        if self._links.namespace_exists():
            await self._vnc.close(guest)

    async def open_vnc_address(self, address: str, port: int) -> bool:
        # The host answers ARP for the address on the public bridge, so frames for it come
        # to the host, where the overlay's NAT sends port 5900 on to QEMU's VNC.
        await self.open_vnc(address, port)
        await self._links.add_host_address(self._public, address)
        return True

    async def close_vnc_address(self, address: str) -> None:
        if self._links.namespace_exists():
            await self._links.remove_host_address(self._public, address)
        await self.close_vnc(address)

    async def start(self) -> None:
        async with self._lock:
            await self._ensure_public()

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        async with self._lock:
            await self._ensure_public()
            backends: dict[int, Backend] = {}
            async with Reverter() as revert:
                for nic in nics:
                    # Detaching undoes every step below, and removes a VLAN bridge (with
                    # its VXLAN device) left idle.
                    revert.add(functools.partial(self._detach, [nic]))
                    if nic.vlan is not None:
                        await self._ensure_vlan(nic.vlan, nic.vni)
                    # The blocked ports and the guard first: the tap never carries a frame
                    # they refuse.
                    await self._firewall.block(self.tap_name(nic), nic.block)
                    if nic.vlan is None:
                        await self._guard.guard(self.tap_name(nic), identity_of(nic))
                    await self._links.add_tap(self.tap_name(nic), self.bridge_of(nic))
                    if nic.address is not None:
                        await self._dhcp.add_entry(self.entry_name(nic), nic.mac, nic.address)
                    backends[nic.index] = TapNetdev(self.tap_name(nic))
                revert.success()
            return backends

    async def _ensure_vlan(self, vlan: str, vni: int | None) -> None:
        bridge = self.vlan_bridge(vlan)
        await self._links.ensure_bridge(bridge)
        if self._vxlan is not None:
            await self._vxlan.ensure(
                self.vxlan_device(vlan), vni_of(vlan) if vni is None else vni, bridge
            )

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        if self._vxlan is None:
            return
        lists = None
        if peers is not None:
            lists = {self.vxlan_device(vlan): each for vlan, each in peers.items()}
        async with self._lock:
            changed = self._vxlan.set_peers(lists)
            if changed is not None and not changed:
                return
            if not self._links.namespace_exists():
                return
            # The VLANs running here whose list changed flood to it at once (a host that got
            # a VLAN's first server hears its broadcasts before any server here restarts).
            links = await self._links.all()
            for name in sorted(links):
                if self._is_vxlan(links, name) and (changed is None or name in changed):
                    await self._vxlan.flood(name)

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        if self._vxlan is None:
            return
        devices = {self.vxlan_device(vlan): each for vlan, each in macs.items()}
        async with self._lock:
            changed = self._vxlan.set_macs(devices)
            if not changed or not self._links.namespace_exists():
                return
            links = await self._links.all()
            for name in sorted(changed):
                if self._is_vxlan(links, name):
                    await self._vxlan.flood(name)

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        async with self._lock:
            await self._detach(nics)

    async def _detach(self, nics: Sequence[NicPlan]) -> None:
        for nic in nics:
            self._dhcp.remove_entry(self.entry_name(nic))
            await self._links.delete(self.tap_name(nic))
            await self._firewall.unblock(self.tap_name(nic))
            await self._guard.unguard(self.tap_name(nic))
        vlans = {self.vlan_bridge(nic.vlan) for nic in nics if nic.vlan is not None}
        if vlans:
            await self._remove_idle_vlan_bridges(vlans)

    async def _remove_idle_vlan_bridges(self, only: Collection[str] | None = None) -> None:
        """Remove the VLAN bridges (of `only`, else all) that no tap or other link is on,
        with their VXLAN devices, and any VXLAN device of ours left outside a bridge."""
        links = await self._links.all()
        ports: dict[str, list[str]] = {}
        for link in links.values():
            if link.master is not None:
                ports.setdefault(link.master, []).append(link.name)
        for link in links.values():
            if (
                link.ours
                and link.name.startswith(self._vlan_prefix)
                and link.name != self._public
                and all(self._is_vxlan(links, port) for port in ports.get(link.name, ()))
                and (only is None or link.name in only)
            ):
                # The VXLAN device first: a bridge's deletion would only free its ports.
                for port in ports.get(link.name, ()):
                    await self._delete_vxlan(port)
                await self._links.delete(link.name)
        for link in links.values():
            if self._is_vxlan(links, link.name) and link.master is None:
                await self._delete_vxlan(link.name)

    async def _delete_vxlan(self, name: str) -> None:
        await self._links.delete(name)
        if self._vxlan is not None:
            self._vxlan.forget(name)

    def _is_vxlan(self, links: dict[str, Link], name: str) -> bool:
        link = links.get(name)
        return link is not None and link.ours and name.startswith(self._vxlan_prefix)

    async def block(self, nic: NicPlan) -> None:
        async with self._lock:
            await self._firewall.block(self.tap_name(nic), nic.block)

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        if not nics or not self._links.namespace_exists():
            return Counters()
        links = await self._links.all()
        total = Counters()
        for nic in nics:
            link = links.get(self.tap_name(nic))
            if link is None:
                continue
            total += link.counters.seen_from_the_other_end()  # the guest's, not the tap's
        return total

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        async with self._lock:
            await self._ensure_public()
            wanted = {self.entry_name(nic): nic for nic in active if nic.address is not None}
            for name, entry in self._dhcp.entries().items():
                nic = wanted.get(name)
                if nic is None or (nic.mac, nic.address) != entry:
                    self._dhcp.remove_entry(name)
            present = self._dhcp.entries()
            for name, nic in wanted.items():
                if name not in present:
                    assert nic.address is not None
                    await self._dhcp.add_entry(name, nic.mac, nic.address)
            if self._vxlan is not None:
                # The running servers' VLANs flood to the peers configured now.
                vnis = {nic.vlan: nic.vni for nic in active if nic.vlan is not None}
                for vlan in sorted(vnis):
                    await self._ensure_vlan(vlan, vnis[vlan])
            taps = {self.tap_name(nic) for nic in active}
            await self._firewall.replace_all({self.tap_name(nic): nic.block for nic in active})
            await self._guard.replace_all(
                {self.tap_name(nic): identity_of(nic) for nic in active if nic.vlan is None}
            )
            for link in (await self._links.all()).values():
                if self._is_our_tap(link.name, link.ours) and link.name not in taps:
                    await self._links.delete(link.name)
            await self._remove_idle_vlan_bridges()

    async def keep_helpers_running(self) -> None:
        """A dnsmasq that died (killed, crashed) while servers hold DHCP entries is started
        again: nothing else would until the next server starts, and meanwhile no running
        guest could renew its lease. Without entries it is not needed (nor running)."""
        async with self._lock:
            if self._dhcp.pid() is not None or not self._dhcp.entries():
                return
            if not self._links.namespace_exists():
                return  # the host's network is gone: nothing to serve
            log.warning("event=dhcp_gone bridge=%s", self._public)
            await self._dhcp.ensure_running()

    async def close(self, idle: bool) -> None:
        if not idle:
            return  # running servers keep their taps, bridges and DHCP server
        async with self._lock:
            await self._dhcp.stop()
            if not self._links.namespace_exists():
                return  # the namespace, and every link in it, is gone already
            await self._vnc.remove()
            await self._fence.remove()
            await self._firewall.remove()
            await self._guard.remove()
            await self._remove_our_links()
            shutil.rmtree(self._dhcp.spec.directory, ignore_errors=True)

    async def _remove_our_links(self) -> None:
        """Remove every link of ours: taps, VLAN bridges, and the public bridge if we made it
        and nothing else is on it."""
        for link in (await self._links.all()).values():
            if self._is_our_tap(link.name, link.ours):
                await self._links.delete(link.name)
        await self._remove_idle_vlan_bridges()
        public = (await self._links.all()).get(self._public)
        if public is not None and public.ours and not await self._links.ports_of(self._public):
            await self._links.delete(self._public)
