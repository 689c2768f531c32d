"""Where the saved states of `dumped` servers live: one encrypted file per server in the
state directory (`dumps/UUID.dump`; not the run directory, it must outlive a reboot), with a
key wrapped by the platform key (see storage/dump_file.py)."""

import functools
from pathlib import Path

from openhosting.hypervisor.driver import StateStream
from openhosting.storage.dump_file import commit_dump, read_dump, write_dump
from openhosting.store.platform_key import derive_key, load_or_create_platform_key


class ServerDumps:
    """The dump files of the servers of one state directory."""

    def __init__(self, directory: Path, wrapping_key: bytes) -> None:
        self.directory = directory
        self._key = wrapping_key

    @classmethod
    def of_state(cls, state_path: Path, platform_key_path: Path) -> "ServerDumps":
        key = derive_key(load_or_create_platform_key(platform_key_path), "server-dumps")
        return cls(state_path / "dumps", key)

    def path(self, uuid: str) -> Path:
        return self.directory / f"{uuid}.dump"

    def _written(self, uuid: str) -> Path:
        return self.directory / f"{uuid}.dump.partial"

    def exists(self, uuid: str) -> bool:
        return self.path(uuid).is_file()

    def sink(self, uuid: str) -> StateStream:
        """What stores the state QEMU streams out, not yet in place (see `commit`)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return functools.partial(_write_from, path=self._written(uuid), key=self._key, uuid=uuid)

    def commit(self, uuid: str) -> None:
        """The stream was whole (QEMU said the migration completed): put the dump in place."""
        commit_dump(self._written(uuid), self.path(uuid))

    def source(self, uuid: str) -> StateStream:
        """What feeds the stored state back to a restoring QEMU."""
        return functools.partial(_read_into, path=self.path(uuid), key=self._key, uuid=uuid)

    def remove(self, uuid: str) -> None:
        """The saved state is used or no longer wanted (restored, stopped, destroyed)."""
        self.path(uuid).unlink(missing_ok=True)
        self._written(uuid).unlink(missing_ok=True)


def _write_from(fd: int, *, path: Path, key: bytes, uuid: str) -> int:
    return write_dump(fd, path, key, uuid)


def _read_into(fd: int, *, path: Path, key: bytes, uuid: str) -> int:
    return read_dump(path, fd, key, uuid)
