"""Placement: which host a new drive or a starting server goes to (docs/api.md §4).

Pure: the hosts with their capacity and what is placed on them in, a host's name out, or a
`FullError` naming what is short. The rules (the seed's promise for `avoid`):

- A drive goes to a host with room for its whole size in its tier (drives are sparse, but a
  drive may fill up: room is the tier's file system less the sizes of the drives there),
  never to a host holding a drive its `avoid` names.
- A server goes to the host holding its boot drive when that host has the cpu and memory,
  else to another host that has (its drives then reached over the network).
- Ties go to the host with the most room, then to the first name: the same inputs always
  give the same host.
- A platform of one host has no choice to make: everything goes there, as before the
  platform had hosts (drives thinly provisioned, `avoid` recorded only).

The caller passes the hosts that can take work (online); which those are is not placement's
business.
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from openhosting.errors import FullError
from openhosting.host_capacity import HostCapacity

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class HostLoad:
    """A host's capacity and what is placed on it."""

    name: str
    capacity: HostCapacity
    used_mhz: int = 0
    used_memory_mb: int = 0
    used_bytes_by_tier: Mapping[str, int] = field(default_factory=dict)

    def free_bytes(self, tier: str) -> int:
        """Bytes not yet promised to drives in `tier` (negative when overcommitted)."""
        return self.capacity.disk_bytes_by_tier.get(tier, 0) - self.used_bytes_by_tier.get(tier, 0)

    @property
    def free_mhz(self) -> int:
        return self.capacity.cores * self.capacity.core_mhz - self.used_mhz

    @property
    def free_memory_mb(self) -> int:
        return self.capacity.memory_mb - self.used_memory_mb


@dataclass(frozen=True)
class DriveRequest:
    """A new drive: its size in bytes, its tier, and the hosts of the drives its `avoid`
    names (drive → host; names that are no drive are left out: they place nothing apart)."""

    size: int
    tier: str
    avoid_hosts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerRequest:
    """A starting server: its cpu (MHz) and mem (MiB), and the host of its boot drive."""

    cpu: int
    mem: int
    boot_host: str | None = None


def size_text(size: int) -> str:
    """`size` bytes as an operator reads them: `20 GiB`, `512 MiB`, `1000 bytes`."""
    if size >= GIB and size % GIB == 0:
        return f"{size // GIB} GiB"
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    return f"{size} bytes"


def _only_host(hosts: Collection[HostLoad]) -> str | None:
    if not hosts:
        raise FullError("No host can take work: none is registered and online")
    if len(hosts) == 1:
        return next(iter(hosts)).name
    return None


def place_drive(request: DriveRequest, hosts: Collection[HostLoad]) -> str:
    """The host for a new drive, or FullError naming what is short."""
    only = _only_host(hosts)
    if only is not None:
        return only
    with_room = [host for host in hosts if host.free_bytes(request.tier) >= request.size]
    if not with_room:
        raise FullError(f"No host has {size_text(request.size)} free in tier {request.tier}")
    avoided = set(request.avoid_hosts.values())
    allowed = [host for host in with_room if host.name not in avoided]
    if not allowed:
        drives = " ".join(sorted(request.avoid_hosts))
        raise FullError(
            f"No host has {size_text(request.size)} free in tier {request.tier} apart from"
            f" the drives named in avoid ({drives})"
        )
    best = min(allowed, key=lambda host: (-host.free_bytes(request.tier), host.name))
    return best.name


def place_server(request: ServerRequest, hosts: Collection[HostLoad]) -> str:
    """The host for a starting server, or FullError naming what is short."""
    only = _only_host(hosts)
    if only is not None:
        return only
    fitting = [
        host
        for host in hosts
        if host.free_mhz >= request.cpu and host.free_memory_mb >= request.mem
    ]
    if any(host.name == request.boot_host for host in fitting):
        return str(request.boot_host)
    if not fitting:
        raise FullError(f"No host has {request.cpu} MHz of cpu and {request.mem} MiB of mem free")
    best = min(fitting, key=lambda host: (-host.free_memory_mb, -host.free_mhz, host.name))
    return best.name


def place_moved_server(request: ServerRequest, hosts: Collection[HostLoad]) -> str:
    """The host a running server moves to (a host drain) among `hosts` (its own left out),
    or FullError: one with room for its cpu and mem, even when it is the only one (a move
    to a full host would overcommit it), the one with the most memory free."""
    fitting = [
        host
        for host in hosts
        if host.free_mhz >= request.cpu and host.free_memory_mb >= request.mem
    ]
    if not fitting:
        others = ", ".join(sorted(host.name for host in hosts)) or "none"
        raise FullError(
            f"No other host has {request.cpu} MHz of cpu and {request.mem} MiB of mem free"
            f" (hosts with a driver here: {others})"
        )
    best = min(fitting, key=lambda host: (-host.free_memory_mb, -host.free_mhz, host.name))
    return best.name
