"""The platform's state in figures, for monitoring: servers by status, drives and bytes by
tier, imaging jobs by state, and what this host's capacity is and how much of it is used (each
storage tier's file system apart)."""

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from openhosting.store import counts
from openhosting.store.jobs import STATES


@dataclass(frozen=True)
class PlatformState:
    servers_by_status: dict[str, int] = field(default_factory=dict)
    drives_by_tier: dict[str, int] = field(default_factory=dict)
    drive_bytes_by_tier: dict[str, int] = field(default_factory=dict)
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    capacity_used: dict[str, int] = field(default_factory=dict)
    capacity_total: dict[str, int] = field(default_factory=dict)
    # Each tier's file system: bytes used and bytes in all (tiers sharing one count it each).
    tier_bytes_used: dict[str, int] = field(default_factory=dict)
    tier_bytes_total: dict[str, int] = field(default_factory=dict)


def host_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def read_platform_state(
    engine: Engine, live: Mapping[str, str], tier_dirs: Mapping[str, Path], core_mhz: int
) -> PlatformState:
    """The figures now; `live` maps the servers whose VM exists to `active` or `paused` (the
    live truth: the database's status of a VM that just ended may lag); `tier_dirs` each
    tier's drive directory, `disk` the one `disk_bytes` reports."""
    with engine.connect() as connection:
        tiers = counts.drives_by_tier(connection)
        jobs = counts.jobs_by_state(connection)
        statuses = counts.server_statuses(connection)
    by_status = dict.fromkeys(("active", "paused", "stopped", "dumped", "dead"), 0)
    cpu = mem = 0
    for uuid, stored, config in statuses:
        if uuid in live:
            cpu, mem = cpu + config.cpu, mem + config.mem
            status = live[uuid]
        else:
            status = stored if stored in ("dead", "dumped") else "stopped"
        by_status[status] = by_status.get(status, 0) + 1
    usage = {
        tier: shutil.disk_usage(directory)
        for tier, directory in tier_dirs.items()
        if directory.exists()
    }
    disk = usage.get("disk")
    return PlatformState(
        servers_by_status=by_status,
        drives_by_tier={tier: n for tier, (n, _) in tiers.items()},
        drive_bytes_by_tier={tier: size for tier, (_, size) in tiers.items()},
        jobs_by_state={state: jobs.get(state, 0) for state in STATES},
        capacity_used={
            "cpu_mhz": cpu,
            "mem_mb": mem,
            "disk_bytes": disk.used if disk else 0,
        },
        capacity_total={
            "cpu_mhz": (os.cpu_count() or 1) * core_mhz,
            "mem_mb": host_memory_mb(),
            "disk_bytes": disk.total if disk else 0,
        },
        tier_bytes_used={tier: figures.used for tier, figures in usage.items()},
        tier_bytes_total={tier: figures.total for tier, figures in usage.items()},
    )
