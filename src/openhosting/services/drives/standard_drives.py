"""Standard drives: the platform's public image library (docs/api.md §4).

A standard drive is a plain drive file owned by the platform user (`PLATFORM_USER`), shared and
readable by everyone and written by nobody: no user owns it, so no user can write, set or
destroy it. Operators add and remove them with the admin tool; every user lists them
(`/drives/list/standard`, `/drives/info/standard`), images from them (gzip images with
`/drives/D/image/STD/gunzip`) and attaches the cdrom ones. A gzip image is stored as it is
and shows `format gzip` and its decompressed size as `rawsize`.

A standard drive's bytes are written once, by `add`, before its row exists, and never again:
a new image is a new drive (`add`, then `remove` of the old one). Its generation
(`standard_generation`, the row's creation time in microseconds) names those bytes in the
hosts' image caches (docs/cluster.md, 'Standard drives on the agents' hosts'): anything that
ever rewrites a standard drive's bytes in place must give its row a new `created_at`.
"""

import functools
import logging
import time
import uuid as uuid_module
from pathlib import Path

from sqlalchemy import Engine

from openhosting.errors import BusyError, FullError, MissingError, UsageError
from openhosting.model.common import EVERYONE, parse_choice, parse_name
from openhosting.reverter import Reverter
from openhosting.storage.drive_files import DriveFiles, is_disk_full
from openhosting.storage.gzip_stream import GzipStreamError, gzip_stream_size
from openhosting.storage.sparse import copy_file_sparse
from openhosting.store import drives as drive_store
from openhosting.store.records import DriveRecord
from openhosting.store.tables import PLATFORM_USER
from openhosting.wire.payload import Value

log = logging.getLogger("openhosting.standard_drives")

MEDIA = ("disk", "cdrom")


def standard_generation(row: DriveRecord) -> str:
    """The generation of standard drive `row`'s bytes: a hex word that changes whenever they
    do (the row's creation time, in microseconds)."""
    return f"{round(row.created_at * 1_000_000):x}"


def standard_info(row: DriveRecord) -> dict[str, Value]:
    """A standard drive as the library lists it."""
    info: dict[str, Value] = {
        "drive": row.uuid,
        "name": row.name,
        "media": row.media,
        "size": row.size,
        "claim:type": row.claim_type,
        "readers": " ".join(row.readers),
    }
    if row.format:
        info["format"] = row.format
    if row.rawsize is not None:
        info["rawsize"] = row.rawsize
    return info


class StandardDrives:
    """The standard drive library."""

    def __init__(self, engine: Engine, files: DriveFiles, host: str = "") -> None:
        self._engine = engine
        self._files = files
        self._host = host  # whose storage holds the files (empty: the first to register)

    def list_uuids(self) -> list[str]:
        return [row.uuid for row in self._rows()]

    def info_all(self) -> list[dict[str, Value]]:
        return [standard_info(row) for row in self._rows()]

    def _rows(self) -> list[DriveRecord]:
        """Disks, then cdroms, each by name (as the original service listed them)."""
        with self._engine.connect() as connection:
            rows = drive_store.drives_of(connection, PLATFORM_USER)
        return sorted(rows, key=lambda row: (row.media != "disk", row.name, row.uuid))

    def add(
        self, path: Path, name: str, media: str = "disk", gzip: bool = False
    ) -> dict[str, Value]:
        """Store a copy of the image file `path` as a new standard drive; returns its info.

        With `gzip`, the file must be a gzip image: it is stored compressed and checked whole.
        """
        name = parse_name(name)
        media = parse_choice(media, "media", MEDIA)
        if gzip and media == "cdrom":
            raise UsageError("A cdrom image is attached as it is: it cannot be a gzip image")
        if not path.exists():
            raise UsageError(f"Cannot read {path}: no such file")
        if not path.is_file():
            raise UsageError(f"Cannot read {path}: not a regular file")
        rawsize = None
        uuid = str(uuid_module.uuid4())
        try:
            if gzip:
                rawsize = gzip_stream_size(path)
            size = copy_file_sparse(path, self._files.path_of(uuid))
        except GzipStreamError as error:
            raise UsageError(f"{path} is not a gzip image: {error.message}") from None
        except OSError as error:
            if is_disk_full(error):
                raise FullError("Cannot add the drive: the platform's storage is full") from None
            raise UsageError(f"Cannot read {path}: {error.strerror or error}") from None
        with Reverter() as revert:
            revert.add(functools.partial(self._files.destroy, uuid))
            if size == 0:
                raise UsageError(f"{path} is empty")
            with self._engine.begin() as connection:
                drive_store.insert_drive(
                    connection,
                    uuid=uuid,
                    user=PLATFORM_USER,
                    name=name,
                    size=size,
                    claim_type="shared",
                    readers=EVERYONE,
                    cipher="none",
                    media=media,
                    format="gzip" if gzip else "",
                    rawsize=rawsize,
                    created_at=time.time(),  # sub-second: lists keep creation order
                    host=self._host,
                )
                row = drive_store.get_drive(connection, uuid)
            revert.success()
        assert row is not None
        log.info(
            "event=standard_drive_added drive=%s name=%r media=%s size=%s format=%s",
            uuid, name, media, size, row.format or "raw",
        )  # fmt: skip
        return standard_info(row)

    def remove(self, uuid: str) -> None:
        """Remove a standard drive. Imaging jobs reading it fail with that reason; a drive
        attached to running servers cannot be removed."""
        with self._engine.begin() as connection:
            row = drive_store.get_drive(connection, uuid)
            if row is None or row.user != PLATFORM_USER:
                raise MissingError(f"Standard drive {uuid} could not be found")
            attached = [
                claim for claim in drive_store.claims_on(connection, uuid) if claim.kind == "guest"
            ]
            if attached:
                raise BusyError(
                    f"Standard drive {uuid} is attached to {len(attached)} running server(s)"
                )
            drive_store.delete_drive(connection, uuid)  # its imaging claims go with it
        self._files.destroy(uuid)
        log.info("event=standard_drive_removed drive=%s", uuid)
