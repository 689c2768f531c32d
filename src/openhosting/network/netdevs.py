"""The network backends of a VM's NICs, as the network layer makes them for the hypervisor.

Plain frozen dataclasses: a mode's driver acquires one per NIC (a tap in bridge mode, a passt
socket in user mode) and the hypervisor's spec (hypervisor/spec.py) carries it to QEMU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Unix socket paths are limited to 108 bytes including the terminating NUL (sun_path).
MAX_SOCKET_PATH = 107

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class UserNetdev:
    """QEMU user-mode networking: no host set-up; the guest gets 10.0.2.15 from QEMU, or
    `dhcp_start` in network `net` (CIDR) behind `host` with name server `dns` when given."""

    net: str | None = None
    host: str | None = None
    dhcp_start: str | None = None
    dns: str | None = None


@dataclass(frozen=True)
class TapNetdev:
    """An existing tap device (bridge mode); the network layer creates and enslaves it."""

    ifname: str

    def __post_init__(self) -> None:
        if not _IFNAME.fullmatch(self.ifname):
            raise ValueError(f"not an interface name: {self.ifname!r}")


@dataclass(frozen=True)
class StreamNetdev:
    """A user-mode network helper (passt) listening on the unix socket `socket`: QEMU sends
    the guest's frames there and the helper does the NAT and DHCP."""

    socket: Path

    def __post_init__(self) -> None:
        if len(str(self.socket).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")


Netdev = UserNetdev | TapNetdev | StreamNetdev
