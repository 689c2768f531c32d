"""Standard drives for servers on agents' hosts: a read-only copy of each in the image cache of
every host that runs a server attaching it (as Nova caches images per compute host; docs/
cluster.md, 'Standard drives on the agents' hosts').

The first start on host H of a server attaching standard drive S copies S's bytes to H's
agent (a `cache_fill` stream, from S's own storage, wherever that is); later starts on H find
the copy there and send nothing. A copy is named by S's UUID and generation (its bytes'
version, services/drives/standard_drives.py), so a copy of other bytes never serves. The VM opens
the copy as a cdrom (`DiskSpec.cache`), read-only.

Starts of several servers with S on H through this API node wait for one fill; through
several API nodes, each may fill: the agent puts each whole copy in place by a rename, so a
VM never sees a half-written one. A copy that cannot be made fails the start with a 503
naming H (the start's undo leaves nothing; the agent removes its temporary file).

Copies of standard drives removed (or of an older generation) are removed from H at the next
look at H's files (services/drives/drive_orphans.py: when an API node connects to H's agent, when
its watch finds the agent back, and every `storage.orphan_check_seconds`).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from sqlalchemy import Engine

from openhosting.errors import ApiError, UnavailableError
from openhosting.services.cluster.host_storages import HostStorages
from openhosting.services.drives.drives import AttachableDrive
from openhosting.services.drives.standard_drives import standard_generation
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.remote_image_cache import RemoteImageCache
from openhosting.storage.remote_storage import RemoteDriveStorage
from openhosting.storage.storage_calls import CachedCopy
from openhosting.store import drives as drive_store
from openhosting.store.tables import PLATFORM_USER

log = logging.getLogger("openhosting.drives")


class HostImageCache(Protocol):
    """The image cache of host `host` (storage/remote_image_cache.py: its agent's)."""

    host: str

    async def lookup(self, drive: str, generation: str) -> bool: ...

    async def copies(self) -> list[CachedCopy]: ...

    async def remove(self, drive: str, generation: str) -> bool: ...

    async def fill(
        self, drive: str, generation: str, size: int, pieces: AsyncIterator[bytes | bytearray]
    ) -> int: ...


# The image cache of a host by its name; None for a host without an agent (its VMs open
# the standard drives' own files, or none: services/drives/drive_exports.py's rules).
CacheOf = Callable[[str], HostImageCache | None]


def remote_cache_of(storages: HostStorages) -> CacheOf:
    """The image cache of each agent's host, beside its drive storage."""

    def cache_of(host: str) -> HostImageCache | None:
        storage = storages.of(host)
        return RemoteImageCache(storage) if isinstance(storage, RemoteDriveStorage) else None

    return cache_of


class StandardCopies:
    """The copies of standard drives in the agents' image caches."""

    def __init__(self, engine: Engine, storages: HostStorages, cache_of: CacheOf) -> None:
        self._engine = engine
        self._storages = storages  # where each standard drive's own bytes are
        self._cache_of = cache_of
        # One fill at a time per copy through this node: the others wait for it, then find
        # it there. Kept (one per host, standard drive and generation: a few).
        self._filling: dict[tuple[str, str, str], asyncio.Lock] = {}

    def to_copy(self, running_on: str, drives: Sequence[AttachableDrive]) -> list[AttachableDrive]:
        """The standard drives of `drives` that a VM on `running_on` opens from that host's
        image cache: those another host holds, when `running_on` has an agent."""
        standard = [d for d in drives if d.generation and d.host and d.host != running_on]
        if not standard or self._cache_of(running_on) is None:
            return []
        return standard

    async def provide(self, server: str, host: str, drive: AttachableDrive) -> None:
        """Make sure `host` holds a copy of standard drive `drive`; 503 `failed` naming the
        host when none can be made."""
        cache = self._cache_of(host)
        assert cache is not None  # `to_copy` chose a host with an agent
        key = (host, drive.uuid, drive.generation)
        try:
            async with self._filling.setdefault(key, asyncio.Lock()):
                await self._provide(cache, server, drive)
        except (ApiError, OSError) as error:  # OSError: the standard drive's own file
            reason = error.message if isinstance(error, ApiError) else str(error)
            log.warning(
                "event=standard_copy_failed host=%s drive=%s server=%s error=%s",
                host, drive.uuid, server, reason,
            )  # fmt: skip
            raise UnavailableError(
                f"Host {host} cannot hold a copy of standard drive {drive.uuid}, which"
                f" server {server} attaches: {reason}"
            ) from None

    async def _provide(self, cache: HostImageCache, server: str, drive: AttachableDrive) -> None:
        if await cache.lookup(drive.uuid, drive.generation):
            log.info(
                "event=standard_copy_reused host=%s drive=%s server=%s",
                cache.host, drive.uuid, server,
            )  # fmt: skip
            return
        source = self._storages.of(drive.host)
        read = source.open_read(DriveBytes(drive.uuid, drive.tier), 0, drive.size, _nothing)
        try:
            await read.begin()
            written = await cache.fill(drive.uuid, drive.generation, drive.size, read.chunks())
        finally:
            read.close()
        log.info(
            "event=standard_drive_cached host=%s drive=%s generation=%s size=%s server=%s",
            cache.host, drive.uuid, drive.generation, written, server,
        )  # fmt: skip

    async def reconcile(self, host: str) -> int:
        """Remove the copies on `host` of standard drives that are gone, or of another
        generation than theirs now: how many were removed. The agent's errors are raised."""
        cache = self._cache_of(host)
        if cache is None:
            return 0
        copies = await cache.copies()
        if not copies:
            return 0
        current = await asyncio.to_thread(self._generations)
        removed = 0
        for copy in copies:
            if current.get(copy.drive) == copy.generation:
                continue
            if await cache.remove(copy.drive, copy.generation):
                removed += 1
                log.info(
                    "event=standard_copy_removed host=%s drive=%s generation=%s size=%s",
                    host, copy.drive, copy.generation, copy.size,
                )  # fmt: skip
        return removed

    def _generations(self) -> dict[str, str]:
        """Each standard drive's generation now, by UUID."""
        with self._engine.connect() as connection:
            rows = drive_store.drives_of(connection, PLATFORM_USER)
        return {row.uuid: standard_generation(row) for row in rows}


def _nothing() -> None:
    """A copy's read ends: no user's counters are counted (the platform's own reads)."""
