"""The storage seam: what the services do with a drive's bytes, on whichever host holds them.

`DriveStorage` is to a drive's bytes what `HypervisorDriver` is to a VM: plain data in and out
(a drive's UUID and tier, sizes, offsets, keys as bytes), so that one implementation works on
this host's drive files (storage/local_storage.py) and another calls the agent of the host
holding the drive (storage/remote_storage.py). It knows nothing of users, limits or claims:
the drive service checks those first.

A read or a write of one request is an object of its own (`DriveRead`, `DriveWrite`), whose
bytes move in pieces, never the whole range in memory.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from openhosting.storage.drive_files import PlainDriveIO

# What a read or a write calls once, when it ends: a write with the bytes written (None when
# aborted), a read with nothing.
WriteClosed = Callable[[int | None], None]
ReadClosed = Callable[[], None]


# How many drive files one page of a host's listing holds at most (`DriveStorage.list_files`).
FILES_PAGE = 1000


@dataclass(frozen=True)
class DriveBytes:
    """A drive's bytes as a read or a write names them: the drive, its tier, and the key that
    opens them (None: a plain drive)."""

    drive: str
    tier: str
    master_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DriveFile:
    """A drive file a host holds: its drive's UUID, its tier, its size in bytes, and the
    seconds since it was last modified (by the host's own clock)."""

    drive: str
    tier: str
    size: int
    age: float


class DriveRead(Protocol):
    """`count` bytes of drive `drive` from `offset`, to be sent or hashed, then `close`d."""

    drive: str
    offset: int
    count: int

    async def begin(self) -> None:
        """Be ready to send: a refusal (the drive gone, its host unreachable) comes from
        here, before the caller has answered anything."""

    @property
    def plain_file(self) -> PlainDriveIO | None:
        """The plain drive file on this host, for sendfile; None otherwise."""

    def chunks(self) -> AsyncIterator[bytes | bytearray]:
        """The bytes, in order, a piece at a time."""

    async def sha256(self) -> str:
        """The hex SHA-256 of the range (the bytes are not sent)."""

    def reads_only_zeros(self) -> bool:
        """Whether the range is known never written (False when it cannot be told cheaply)."""

    def close(self) -> None: ...


class BodyDecoder(Protocol):
    """The decoding of a write's body that comes encoded (a gzip body): fed the bytes as
    they came, it gives the drive's bytes in bounded pieces; a body that proves bad raises
    the API's error (`UsageError`), in `feed` or at its end, in `finish`."""

    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> None: ...


class DriveWrite(Protocol):
    """One write of bytes in order from an offset, acknowledged only once durable."""

    @property
    def remaining(self) -> int:
        """How many more bytes fit before the drive's end."""

    async def reserve(self, length: int) -> None:
        """Give the next `length` bytes their disk blocks first (507 before any is written)."""

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> int:
        """Make what was written durable; the bytes written."""

    async def abort(self) -> None:
        """Give up (a staged write leaves the drive as it was)."""


class DriveStorage(Protocol):
    """The drives of one host: created, resized, destroyed, read and written by UUID and tier.

    Failures are the API's errors (`FullError` for no room, `UsageError` for a size the host
    cannot hold, `SystemError_` or `FailedError` for a fault), raised where the cause is
    known; a local file error that means none of those stays an `OSError`.
    """

    def is_available(self, drive: str, tier: str) -> bool:
        """Whether the drive's bytes can be reached now (its `status active`)."""

    def disk_path(self, drive: str, tier: str) -> Path:
        """The drive's file as its host names it (a VM there opens it by this path)."""

    async def create(
        self, drive: str, tier: str, size: int, passphrase: bytes | None
    ) -> bytes | None:
        """A new drive of `size` bytes: plain, or with `passphrase` a LUKS container, whose
        master key is returned."""

    async def resize(
        self, drive: str, tier: str, size: int, master_key: bytes | None, kept: int
    ) -> None:
        """Make the drive `size` bytes long, only its first `kept` keeping their data."""

    async def destroy(self, drive: str, tier: str) -> None:
        """Remove the drive's bytes (a drive already gone is no error)."""

    def open_read(
        self, drive_bytes: DriveBytes, offset: int, count: int, on_close: ReadClosed
    ) -> DriveRead: ...

    def open_write(
        self,
        drive_bytes: DriveBytes,
        offset: int,
        size: int,
        staged: bool,
        on_close: WriteClosed,
        decoder: BodyDecoder | None = None,
    ) -> DriveWrite:
        """A write from `offset` of a drive of `size` bytes: straight to the drive, or
        `staged` (applied whole once all of it has come, as for a gzip body). A staged write
        given a `decoder` is written the body as it came and decodes it itself."""

    async def list_files(self, after: str, limit: int = FILES_PAGE) -> list[DriveFile]:
        """The host's drive files whose UUID sorts after `after` ("" for the first page), in
        UUID order, `limit` at most: page on with the last one's UUID until a page is
        short."""

    async def remove_orphan(self, drive: str, tier: str, age: float) -> bool:
        """Remove the drive's file only if it was not modified in the last `age` seconds (a
        drive being made now keeps it); whether it was removed."""

    async def close(self) -> None:
        """Let go of connections (nothing of the drives changes)."""
