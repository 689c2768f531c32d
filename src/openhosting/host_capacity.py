"""What a hypervisor host offers, measured where it runs: cores, the MHz of one, memory less
the host's reserve, and the size of each storage tier's file system.

The API daemon measures its own host with it; a host agent measures its host and reports it
to the control plane (agent/server.py's `capacity` call), which records it in the host's row
on connect and at each heartbeat. Plain data: it crosses the wire as hypervisor/calls.py
encodes records.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from openhosting.config import Config, is_tier_name

# The largest figure each column of the hosts table holds on both engines (PostgreSQL's
# INTEGER is 32 bits): an agent's report beyond it would fail the heartbeat's one transaction,
# which beats every host a node reached, so it is refused as it is decoded.
MAX_INTEGER = 2**31 - 1
MAX_BIG_INTEGER = 2**63 - 1
# Tiers a host may report: each is a key of `host list` and a part of the host's row.
MAX_TIERS = 64


@dataclass(frozen=True)
class HostCapacity:
    cores: int
    core_mhz: int
    memory_mb: int
    disk_bytes_by_tier: dict[str, int]

    def __post_init__(self) -> None:
        figures = [self.cores, self.core_mhz, self.memory_mb, *self.disk_bytes_by_tier.values()]
        if any(figure < 0 for figure in figures):
            raise ValueError(f"a negative capacity: {self}")
        if max(self.cores, self.core_mhz) > MAX_INTEGER or max(figures) > MAX_BIG_INTEGER:
            raise ValueError(f"more than a host's row holds: {self}"[:300])
        tiers = self.disk_bytes_by_tier
        if len(tiers) > MAX_TIERS or not all(is_tier_name(tier) for tier in tiers):
            raise ValueError(f"not the tiers of a host: {sorted(tiers)}"[:300])


def memory_total_mb(meminfo: str) -> int:
    """MemTotal of a /proc/meminfo text, in MiB."""
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            return int(value.split()[0]) // 1024  # kB
    raise ValueError("/proc/meminfo has no MemTotal")


def file_system_bytes(directory: Path) -> int:
    """The size of the file system holding `directory` (or the nearest parent that exists:
    a tier's directory is made with its first drive)."""
    for candidate in (directory.absolute(), *directory.absolute().parents):
        if candidate.exists():
            stats = os.statvfs(candidate)
            return stats.f_blocks * stats.f_frsize
    return 0


def measure_capacity(config: Config) -> HostCapacity:
    """This machine as the configuration and the kernel describe it."""
    with open("/proc/meminfo") as meminfo:
        memory = memory_total_mb(meminfo.read())
    return HostCapacity(
        cores=os.cpu_count() or 1,
        core_mhz=config.hypervisor.core_mhz,
        memory_mb=max(0, memory - config.host.memory_reserve_mb),
        disk_bytes_by_tier={
            tier: file_system_bytes(directory) for tier, directory in config.tier_paths.items()
        },
    )
