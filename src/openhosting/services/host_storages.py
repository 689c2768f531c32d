"""The storage of each host's drives: this host's files, and for a host with an agent
(`hosts.agent`) a `DriveStorage` that streams to that agent (storage/remote_storage.py, made
by the connector the daemon gives, so that the services hold only the interface).

Without a connector (the admin tool, tests of one host) every drive's bytes are this host's,
as before drives were streamed to agents. A host whose row names no agent cannot be reached:
its drives are `inactive` and their bytes refused with 507 naming it.
"""

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from openhosting.errors import FullError
from openhosting.storage.drive_storage import (
    DriveRead,
    DriveStorage,
    DriveWrite,
    ReadClosed,
    WriteClosed,
)
from openhosting.store import hosts as host_store

log = logging.getLogger("openhosting.hosts")

# (host, its agent's HOST:PORT) → the storage of the drives that host holds.
StorageConnector = Callable[[str, str], DriveStorage]


class HostStorages:
    """Host name → the storage of its drives; the empty name is this daemon's own host."""

    def __init__(self, local_name: str, local: DriveStorage, engine: Engine) -> None:
        self.local_name = local_name
        self.local = local
        self._engine = engine
        self._remote: dict[str, DriveStorage] = {}
        self.connector: StorageConnector | None = None

    def is_local(self, host: str) -> bool:
        """Whether drives of `host` are this host's files."""
        return not host or host == self.local_name or self.connector is None

    def of(self, host: str) -> DriveStorage:
        """The storage of `host`'s drives. An agent's address is read once per process (a
        new address is taken at the next start, as for the hypervisor's connection)."""
        if self.is_local(host):
            return self.local
        storage = self._remote.get(host)
        if storage is None:
            with self._engine.connect() as connection:
                record = host_store.get_host(connection, host)
            if record is None or not record.agent or self.connector is None:
                return _Unreachable(host)
            storage = self.connector(host, record.agent)
            self._remote[host] = storage
            log.info("event=host_storage_connected host=%s agent=%s", host, record.agent)
        return storage

    async def close(self) -> None:
        for storage in self._remote.values():
            await storage.close()
        self._remote.clear()


class _Unreachable:
    """The drives of a host with no agent: nothing of them can be reached from here."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _refused(self) -> FullError:
        return FullError(f"Host {self.host} holding the drive has no agent to reach it by")

    def is_available(self, drive: str, tier: str) -> bool:
        return False

    def disk_path(self, drive: str, tier: str) -> Path:
        raise self._refused()

    async def create(
        self, drive: str, tier: str, size: int, passphrase: bytes | None
    ) -> bytes | None:
        raise self._refused()

    async def resize(
        self, drive: str, tier: str, size: int, master_key: bytes | None, kept: int
    ) -> None:
        raise self._refused()

    async def destroy(self, drive: str, tier: str) -> None:
        raise self._refused()

    def open_read(
        self,
        drive: str,
        tier: str,
        master_key: bytes | None,
        offset: int,
        count: int,
        on_close: ReadClosed,
    ) -> DriveRead:
        on_close()
        raise self._refused()

    def open_write(
        self,
        drive: str,
        tier: str,
        master_key: bytes | None,
        offset: int,
        size: int,
        staged: bool,
        on_close: WriteClosed,
    ) -> DriveWrite:
        on_close(None)
        raise self._refused()

    async def close(self) -> None:
        """Nothing held."""
