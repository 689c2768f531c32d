"""The storage of each host's drives: for a host with an agent (`hosts.agent`) a `DriveStorage`
that streams to that agent (storage/remote_storage.py, made by the connector the daemon
gives, so that the services hold only the interface), for every other drive this host's
files.

A drive's bytes are an agent's only when its host has one: a drive of this host or of a host
without an agent (this host under a former name, another API node on the same storage) is
this host's files, as every drive was before drives were streamed to agents. A host no row
names (removed from the platform) holds drives nothing can reach: they are `inactive` and
their use is 507 naming the host. Without a connector (the admin tool, tests of one host)
every drive is this host's.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from openhosting.errors import FullError
from openhosting.storage.drive_storage import (
    FILES_PAGE,
    BodyDecoder,
    DriveBytes,
    DriveFile,
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
# Seconds a host found without an agent is taken as such before its row is read again
# (`host set --agent` takes effect within this; an agent's address, once found, is kept
# until the process restarts, as the hypervisor's connection is).
NO_AGENT_SECONDS = 10.0


class HostStorages:
    """Host name → the storage of its drives."""

    def __init__(self, local_name: str, local: DriveStorage, engine: Engine) -> None:
        self.local_name = local_name
        self.local = local
        self._engine = engine
        self._remote: dict[str, DriveStorage] = {}
        self._no_agent: dict[str, float] = {}  # host → when it was seen without an agent
        self.connector: StorageConnector | None = None

    def is_local(self, host: str) -> bool:
        """Whether the drives of `host` are this host's files."""
        return self.of(host) is self.local

    def holder(self, host: str) -> str:
        """The host whose storage holds a drive of `host`: that host when its agent does,
        else this one."""
        return self.local_name if self.is_local(host) else host

    def of(self, host: str) -> DriveStorage:
        """The storage of `host`'s drives (see the module's docstring)."""
        if not host or host == self.local_name or self.connector is None:
            return self.local
        storage = self._remote.get(host)
        if storage is not None:
            return storage
        seen = self._no_agent.get(host)
        if seen is not None and time.monotonic() - seen < NO_AGENT_SECONDS:
            return self.local
        with self._engine.connect() as connection:
            record = host_store.get_host(connection, host)
        if record is None:
            return _Unreachable(host)
        if not record.agent:
            self._no_agent[host] = time.monotonic()
            return self.local
        storage = self.connector(host, record.agent)
        self._remote[host] = storage
        self._no_agent.pop(host, None)
        log.info("event=host_storage_connected host=%s agent=%s", host, record.agent)
        return storage

    async def close(self) -> None:
        for storage in self._remote.values():
            await storage.close()
        self._remote.clear()


class _Unreachable:
    """The drives of a host no row names: nothing of them can be reached from here."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _refused(self) -> FullError:
        return FullError(f"Host {self.host} holding the drive is not a host of this platform")

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
        self, drive_bytes: DriveBytes, offset: int, count: int, on_close: ReadClosed
    ) -> DriveRead:
        on_close()
        raise self._refused()

    def open_write(
        self,
        drive_bytes: DriveBytes,
        offset: int,
        size: int,
        staged: bool,
        on_close: WriteClosed,
        decoder: BodyDecoder | None = None,
    ) -> DriveWrite:
        on_close(None)
        raise self._refused()

    async def list_files(self, after: str, limit: int = FILES_PAGE) -> list[DriveFile]:
        raise self._refused()

    async def remove_orphan(self, drive: str, tier: str, age: float) -> bool:
        raise self._refused()

    async def close(self) -> None:
        """Nothing held."""
