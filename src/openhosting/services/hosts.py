"""Hosts: this host's capacity, measured and registered with the platform, its heartbeat,
and every host's capacity and use for placement and the operator (`openhosting-admin host
list`).

Until host agents exist every VM and drive file is this daemon's host's: servers' use counts
against it, and it is the one host a new drive can be placed on.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from openhosting.config import Config
from openhosting.services.placement import DriveRequest, HostLoad, place_drive
from openhosting.store import counts
from openhosting.store import hosts as host_store
from openhosting.store.records import HostRecord

log = logging.getLogger("openhosting.hosts")


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


def measure_host(config: Config, now: float) -> HostRecord:
    """This host as the configuration and the kernel describe it."""
    with open("/proc/meminfo") as meminfo:
        memory = memory_total_mb(meminfo.read())
    return HostRecord(
        name=config.host_name,
        state="online",
        cores=os.cpu_count() or 1,
        core_mhz=config.hypervisor.core_mhz,
        memory_mb=max(0, memory - config.host.memory_reserve_mb),
        disk_bytes_by_tier={
            tier: file_system_bytes(directory) for tier, directory in config.tier_paths.items()
        },
        heartbeat_at=now,
        created_at=now,
    )


@dataclass(frozen=True)
class HostView:
    """A host as the operator sees it: capacity, use and state."""

    record: HostRecord
    state: str  # online, or offline when its heartbeat is older than host.offline_seconds
    heartbeat_age: float
    load: HostLoad


class Hosts:
    """The hosts service: this host's registration and heartbeat, every host's load."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self._engine = engine
        self._config = config
        self.name = config.host_name
        self.local = measure_host(config, time.time())

    def register(self) -> HostRecord:
        """Measure this host again and record it; drives from before hosts become its own."""
        now = time.time()
        self.local = measure_host(self._config, now)
        with self._engine.begin() as connection:
            host_store.register_host(connection, self.local)
        log.info(
            "event=host_registered host=%s cores=%s memory_mb=%s",
            self.name,
            self.local.cores,
            self.local.memory_mb,
        )
        return self.local

    def heartbeat(self) -> None:
        with self._engine.begin() as connection:
            known = host_store.heartbeat(connection, self.name, time.time())
            if not known:  # the row went (an operator's mistake): put it back
                host_store.register_host(connection, self.local)

    async def heartbeat_every(self) -> None:
        """Heartbeat every `host.heartbeat_seconds` until cancelled."""
        interval = max(1, self._config.host.heartbeat_seconds)
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.heartbeat)
            except Exception as error:  # a busy or failing database: try again next beat
                log.warning("event=heartbeat_failed host=%s error=%s", self.name, error)

    def _loads(
        self, connection: Connection, records: list[HostRecord], servers: bool = True
    ) -> list[HostLoad]:
        """The load of each host of `records`; without `servers`, their drives' only (a
        drive's placement needs no cpu or mem, and decoding every server's configuration
        would cost each drive create)."""
        drive_bytes = host_store.drive_bytes_by_host(connection)
        # Every VM runs on this daemon's host until agents run them elsewhere.
        used_mhz = used_mb = 0
        for _uuid, status, server in counts.server_statuses(connection) if servers else []:
            if status == "active":
                used_mhz, used_mb = used_mhz + server.cpu, used_mb + server.mem
        loads = []
        for record in records:
            local = record.name == self.name
            loads.append(
                HostLoad(
                    name=record.name,
                    cores=record.cores,
                    core_mhz=record.core_mhz,
                    memory_mb=record.memory_mb,
                    disk_bytes_by_tier=record.disk_bytes_by_tier,
                    used_mhz=used_mhz if local else 0,
                    used_memory_mb=used_mb if local else 0,
                    used_bytes_by_tier={
                        tier: size
                        for (host, tier), size in drive_bytes.items()
                        if host == record.name
                    },
                )
            )
        return loads

    def place_drive(
        self, connection: Connection, size: int, tier: str, avoid: tuple[str, ...]
    ) -> str:
        """The host a new drive goes to (FullError when none has room)."""
        # This daemon makes drive files on its own host only: the one candidate until host
        # agents make them elsewhere.
        request = DriveRequest(
            size=size, tier=tier, avoid_hosts=host_store.hosts_of_drives(connection, list(avoid))
        )
        return place_drive(request, self._loads(connection, [self.local], servers=False))

    def overview(self) -> list[HostView]:
        """Every registered host with its capacity, use and state, by name."""
        now = time.time()
        with self._engine.connect() as connection:
            records = host_store.list_hosts(connection)
            loads = self._loads(connection, records)
        views = []
        for record, load in zip(records, loads, strict=True):
            age = max(0.0, now - record.heartbeat_at)
            offline = age > self._config.host.offline_seconds
            views.append(
                HostView(
                    record=record,
                    state="offline" if offline else record.state,
                    heartbeat_age=age,
                    load=load,
                )
            )
        return views
