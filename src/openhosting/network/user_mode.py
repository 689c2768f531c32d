"""User-mode networking: QEMU's built-in NAT and DHCP, with nothing on the host.

The guest is given 10.0.2.15 by QEMU; a NIC that holds an IP resource is given that address
instead, in the pool's subnet behind the pool's gateway (inside QEMU only: it is not reachable
from outside, as nothing in user mode is). There are no per-NIC counters and no VLANs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from ipaddress import IPv4Address

from openhosting.hypervisor.argv import UserNetdev
from openhosting.network.driver import Backend, NicPlan
from openhosting.network.links import Counters
from openhosting.network.pool import AddressPool

GUEST_ADDRESS = "10.0.2.15"  # what QEMU's user-mode DHCP gives the first guest NIC


class UserNetwork:
    """The user-mode driver (see `NetworkDriver`)."""

    mode = "user"
    namespace = ""
    pool_for_auto = False
    vnc_address: str | None = None

    def __init__(self, pool: AddressPool) -> None:
        self._pool = pool

    def guest_address(self, nic: NicPlan) -> str | None:
        return nic.address or GUEST_ADDRESS

    def netdev(self, nic: NicPlan) -> UserNetdev:
        if nic.address is None:
            return UserNetdev()
        # QEMU needs a name server address of its own, apart from the guest and the host.
        taken = {IPv4Address(nic.address), self._pool.gateway}
        candidates = itertools.chain(self._pool.nameservers, self._pool.subnet.hosts())
        dns = next((ns for ns in candidates if ns not in taken and ns in self._pool.subnet), None)
        return UserNetdev(
            net=str(self._pool.subnet),
            host=str(self._pool.gateway),
            dhcp_start=nic.address,
            dns=str(dns) if dns is not None else None,
        )

    async def open_vnc(self, guest: str, port: int) -> bool:
        return False  # 10.0.2.15 is private to QEMU: VNC stays on the host's address

    async def close_vnc(self, guest: str) -> None:
        return None

    async def start(self) -> None:
        return None

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        return {nic.index: self.netdev(nic) for nic in nics}

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        return None

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        return Counters()  # QEMU 7.2 counts nothing per user-mode NIC

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        return None

    async def close(self, idle: bool) -> None:
        return None
