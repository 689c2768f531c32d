"""User-mode networking: one passt per NIC does the guest's NAT, DHCP and DNS; no bridge,
no tap, no DHCP server on the host.

The guest is given 10.0.2.15 behind 10.0.2.2 with name server 10.0.2.3, as QEMU's built-in
user mode gave; a NIC that holds an IP resource is given that address instead, in the pool's
subnet behind the pool's gateway (inside passt only: it is not reachable from outside, as
nothing in user mode is). Each NIC's traffic is counted by the host's kernel on passt's
sockets (see passt_counters.py). There are no VLANs, and `nic:N:block` has nothing left to
block: passt forwards no port inbound (see passt.py), so every inbound port of a user-mode
guest is closed already.

A guest reaches the outside world and nothing of its host: passt never maps the gateway to
the host's loopback (QEMU 7.2's built-in slirp always does, and its only switch, `restrict`,
cuts the outside too), and when the daemon runs as root the `GuestFence` refuses passt's
account every new flow to the host's own addresses but DNS (see guest_fence.py).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import pwd
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from openhosting.network import passt
from openhosting.network.driver import Backend, NicPlan
from openhosting.network.errors import NetworkError
from openhosting.network.guest_fence import GuestFence, table_name
from openhosting.network.links import Counters
from openhosting.network.netdevs import StreamNetdev
from openhosting.network.passt import GuestAddressing, PasstFiles
from openhosting.network.passt_counters import PasstCounters
from openhosting.network.pool import AddressPool
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.network")

GUEST_ADDRESS = "10.0.2.15"  # what user mode's DHCP gives a guest NIC without an address
DEFAULT_ADDRESSING = GuestAddressing(
    address=IPv4Address(GUEST_ADDRESS),
    network=IPv4Network("10.0.2.0/24"),
    gateway=IPv4Address("10.0.2.2"),
    dns=IPv4Address("10.0.2.3"),
)


def passt_account(run_as: str) -> pwd.struct_passwd | None:
    """The account passt runs as, from `hypervisor.run_as` (QEMU's): as root always some
    unprivileged account (passt refuses to stay root; `auto` and "" mean nobody), else the
    daemon's own (None)."""
    if os.geteuid() != 0:
        return None
    name = run_as if run_as not in ("", "auto") else "nobody"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        # As for QEMU (see server_lifecycle.qemu_user), a missing account is not fatal.
        log.warning("event=passt_user_missing user=%s fallback=nobody", name)
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        raise NetworkError("no account for the user-mode network helper (nobody)") from None


class UserNetwork:
    """The user-mode driver (see `NetworkDriver`); passt's files live in `run_dir`/passt."""

    mode = "user"
    namespace = ""
    pool_for_auto = False
    vnc_address: str | None = None

    def __init__(self, pool: AddressPool, run_dir: Path, run_as: str = "auto") -> None:
        self._pool = pool
        self._directory = run_dir / "passt"
        self._run_as = run_as
        self._fence = GuestFence(table_name(self._directory))
        self._counters = PasstCounters(self._directory)
        self._warned = False  # that guests are not fenced off the host (no root), once

    def guest_address(self, nic: NicPlan) -> str | None:
        return nic.address or GUEST_ADDRESS

    def addressing(self, nic: NicPlan) -> GuestAddressing:
        """What the NIC's passt offers the guest (pure)."""
        if nic.address is None:
            # passt still needs the guest's address to translate its traffic.
            return dataclasses.replace(DEFAULT_ADDRESSING, dhcp=nic.dhcp)
        # The guest's name server needs an address of its own, apart from guest and gateway.
        taken = {IPv4Address(nic.address), self._pool.gateway}
        candidates = itertools.chain(self._pool.nameservers, self._pool.subnet.hosts())
        dns = next(ns for ns in candidates if ns not in taken and ns in self._pool.subnet)
        return GuestAddressing(
            address=IPv4Address(nic.address),
            network=self._pool.subnet,
            gateway=self._pool.gateway,
            dns=dns,
            dhcp=nic.dhcp,
        )

    def _files(self, nic: NicPlan) -> PasstFiles:
        return PasstFiles(self._directory, nic.server, nic.index)

    async def open_vnc(self, guest: str, port: int) -> bool:
        return False  # the guest's address is private to passt: VNC stays on the host's

    async def close_vnc(self, guest: str) -> None:
        return None

    async def open_vnc_address(self, address: str, port: int) -> bool:
        return False  # no public network to take an address on

    async def close_vnc_address(self, address: str) -> None:
        return None

    async def start(self) -> None:
        account = passt_account(self._run_as)
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is None:
            if not self._warned:
                log.warning("event=guest_fence_missing reason=not_root")
                self._warned = True
            return
        # passt, once unprivileged, writes its pidfile here and QEMU (the same account)
        # connects to its socket: it must own the directory and pass through the ones above.
        os.chown(self._directory, account.pw_uid, account.pw_gid)
        for parent in (self._directory.parent, self._directory.parent.parent):
            parent.chmod(parent.stat().st_mode | 0o711)
        await self._fence.ensure(account.pw_uid)

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        if not nics:
            # No passt to fence: a server without NICs opens no flow for its guest. Its start
            # then runs no `nft` (each run costs 30-400 ms here, and many starts at once).
            return {}
        await self.start()
        account = passt_account(self._run_as)
        backends: dict[int, Backend] = {}
        async with Reverter() as revert:
            for nic in nics:
                files = self._files(nic)
                revert.add(functools.partial(self._stop, files))
                cgroup_procs = self._counters.prepare(files)
                await self._counters.watch(files)  # from passt's first packet on
                await passt.start(
                    files,
                    self.addressing(nic),
                    account.pw_name if account else None,
                    cgroup_procs=cgroup_procs,
                )
                backends[nic.index] = StreamNetdev(files.socket)
            revert.success()
        return backends

    async def _stop(self, files: PasstFiles) -> None:
        await passt.stop(files)
        await self._counters.forget(files)

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        for nic in nics:
            await self._stop(self._files(nic))

    async def block(self, nic: NicPlan) -> None:
        return None  # passt forwards no port to the guest: nothing inbound reaches it

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        total = Counters()
        for nic in nics:
            total += await self._counters.counters(self._files(nic))
        return total

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        pass  # no VLANs in user mode

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        pass  # no VLANs in user mode

    async def keep_helpers_running(self) -> None:
        """Nothing to watch: a NIC's passt is its own server's, and goes with it."""

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        keep = {(nic.server, nic.index) for nic in active}
        for files in passt.running_files(self._directory):
            if (files.server, files.index) not in keep:
                await self._stop(files)

    async def close(self, idle: bool) -> None:
        if not idle:
            return  # the running guests keep their passt and their fence
        await self.reconcile([])
        if passt_account(self._run_as) is not None:
            await self._fence.remove()
