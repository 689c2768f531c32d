"""Queries on the drives and claims tables."""

from collections.abc import Collection
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Update,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)

from openhosting.store.reader import Reader
from openhosting.store.records import ClaimRecord, DriveRecord
from openhosting.store.tables import claims, drives

# A drive's row by `uuid`, and the claims on `drive` oldest first: built once, for get_drive
# and claims_on and for the Reader (store/reader.py). SQLAlchemy builds and keys a statement
# made per call anew each time (~55 µs a statement on this machine, ~13 µs for one built
# once): the statements most commands run are built once, their values bound at each
# execute; bound names start with `b_` where a column's own name is reserved for the values
# a row gets.
DRIVE_BY_UUID = select(drives).where(drives.c.uuid == bindparam("uuid"))
CLAIMS_ON_DRIVE = select(claims).where(claims.c.drive == bindparam("drive")).order_by(claims.c.id)
_INSERT_DRIVE = insert(drives)
_UPDATE_DRIVE = update(drives).where(drives.c.uuid == bindparam("b_uuid"))
_DELETE_DRIVE = delete(drives).where(drives.c.uuid == bindparam("b_uuid"))
_DRIVE_HOSTS = select(drives.c.uuid, drives.c.host).where(
    drives.c.uuid.in_(bindparam("b_uuids", expanding=True))
)


def insert_drive(connection: Connection, **values: Any) -> None:
    connection.execute(_INSERT_DRIVE, values)


def get_drive(connection: Connection, uuid: str) -> DriveRecord | None:
    row = connection.execute(DRIVE_BY_UUID, {"uuid": uuid}).mappings().first()
    return DriveRecord.from_row(row) if row is not None else None


def read_drive(reader: Reader, uuid: str) -> DriveRecord | None:
    """`get_drive` through the Reader."""
    rows = reader.mappings(DRIVE_BY_UUID, uuid=uuid)
    return DriveRecord.from_row(rows[0]) if rows else None


def read_claims_on(reader: Reader, drive: str) -> list[ClaimRecord]:
    """`claims_on` through the Reader."""
    return [ClaimRecord.from_row(row) for row in reader.mappings(CLAIMS_ON_DRIVE, drive=drive)]


# For the Reader (store/reader.py): the UUIDs of the drives of `user`, oldest first.
DRIVE_UUIDS_BY_USER = (
    select(drives.c.uuid)
    .where(drives.c.user == bindparam("user"))
    .order_by(drives.c.created_at, drives.c.uuid)
)


# For a Reader (store/reader.py): every drive of `user`, oldest first, and the claims on them
# (by a join on their owner: an `IN` of thousands of UUIDs costs a bound parameter each).
DRIVES_BY_USER = (
    select(drives)
    .where(drives.c.user == bindparam("user"))
    .order_by(drives.c.created_at, drives.c.uuid)
)
CLAIMS_ON_DRIVES_OF_USER = (
    select(claims)
    .join(drives, drives.c.uuid == claims.c.drive)
    .where(drives.c.user == bindparam("user"))
    .order_by(claims.c.id)
)


def read_drives_of(reader: Reader, user: str) -> list[DriveRecord]:
    """`drives_of` through a Reader: without SQLAlchemy's cost per row (a third of an info
    of thousands)."""
    return [DriveRecord.from_row(row) for row in reader.mappings(DRIVES_BY_USER, user=user)]


def read_claims_on_drives_of(reader: Reader, user: str) -> dict[str, list[ClaimRecord]]:
    """The claims on each drive of `user` that has any, oldest first."""
    result: dict[str, list[ClaimRecord]] = {}
    for row in reader.mappings(CLAIMS_ON_DRIVES_OF_USER, user=user):
        result.setdefault(row["drive"], []).append(ClaimRecord.from_row(row))
    return result


def drives_of(connection: Connection, user: str) -> list[DriveRecord]:
    query = select(drives).where(drives.c.user == user)
    rows = connection.execute(query.order_by(drives.c.created_at, drives.c.uuid)).mappings()
    return [DriveRecord.from_row(row) for row in rows]


def all_drives(connection: Connection) -> list[DriveRecord]:
    """Every drive, of every user."""
    return [DriveRecord.from_row(row) for row in connection.execute(select(drives)).mappings()]


# The sum of drives' sizes, as a double: a 64-bit integer sum would overflow (an error in
# SQLite) with a few very large sparse drives; a double is exact up to 2^53 bytes (8 PiB).
SIZE_SUM = func.coalesce(func.sum(cast(drives.c.size, Float)), 0)


def total_size_of(
    connection: Connection, user: str, excluding: str | None = None, tier: str | None = None
) -> int:
    """The bytes of `user`'s drives (of `tier` only, when given), but drive `excluding`."""
    query = select(SIZE_SUM).where(drives.c.user == user)
    if tier is not None:
        query = query.where(drives.c.tier == tier)
    if excluding is not None:
        query = query.where(drives.c.uuid != excluding)
    return int(connection.execute(query).scalar_one())


def update_drive(connection: Connection, uuid: str, **values: Any) -> None:
    connection.execute(_UPDATE_DRIVE, {"b_uuid": uuid, **values})


def _add_io(direction: str) -> Update:
    byte_column = drives.c[f"{direction}_bytes"]
    request_column = drives.c[f"{direction}_requests"]
    return (
        update(drives)
        .where(drives.c.uuid == bindparam("b_uuid"))
        .values(
            {byte_column: byte_column + bindparam("b_bytes"), request_column: request_column + 1}
        )
    )


# Every drive read and write counts itself: built once per direction.
_ADD_IO = {direction: _add_io(direction) for direction in ("read", "write")}


def add_io_counters(connection: Connection, uuid: str, direction: str, nbytes: int) -> None:
    """Add one request of `nbytes` to the `read` or `write` counters of a drive."""
    connection.execute(_ADD_IO[direction], {"b_uuid": uuid, "b_bytes": nbytes})


def delete_drive(connection: Connection, uuid: str) -> None:
    connection.execute(_DELETE_DRIVE, {"b_uuid": uuid})


def drive_hosts(connection: Connection, uuids: Collection[str]) -> dict[str, str]:
    """The host of each drive of `uuids` that has a row."""
    rows = connection.execute(_DRIVE_HOSTS, {"b_uuids": list(uuids)})
    return {uuid: host for uuid, host in rows}


def claim_holders(connection: Connection, uuids: Collection[str]) -> dict[str, list[str]]:
    """Who holds a claim on each drive of `uuids` (a server's UUID for a server's drive)."""
    query = select(claims.c.drive, claims.c.holder).where(claims.c.drive.in_(list(uuids)))
    holders: dict[str, list[str]] = {}
    for drive, holder in connection.execute(query):
        holders.setdefault(drive, []).append(holder)
    return holders


def claims_on(connection: Connection, drive: str) -> list[ClaimRecord]:
    rows = connection.execute(CLAIMS_ON_DRIVE, {"drive": drive}).mappings()
    return [ClaimRecord.from_row(row) for row in rows]


# A drive's I/O counters, by their column names; a guest claim keeps the same with `guest_`.
IO_COUNTERS = ("read_bytes", "read_requests", "write_bytes", "write_requests")


def guest_claims_of(connection: Connection, server: str) -> list[ClaimRecord]:
    """The claims `server` holds on drives, with how much of its guest's I/O each has added
    to its drive (`guest_read_bytes`, ...)."""
    query = select(claims).where(claims.c.kind == "guest", claims.c.holder == server)
    rows = connection.execute(query.order_by(claims.c.id)).mappings()
    return [ClaimRecord.from_row(row) for row in rows]


def add_guest_io(
    connection: Connection, claim: int, drive: str, delta: dict[str, int], mark: dict[str, int]
) -> None:
    """Add `delta` (by counter name) to the drive's I/O counters and set the claim's mark to
    `mark`: in the caller's transaction, so the two never disagree."""
    connection.execute(
        update(drives)
        .where(drives.c.uuid == drive)
        .values({drives.c[name]: drives.c[name] + delta[name] for name in IO_COUNTERS})
    )
    connection.execute(
        update(claims)
        .where(claims.c.id == claim)
        .values({claims.c[f"guest_{name}"]: mark[name] for name in IO_COUNTERS})
    )


def reset_guest_io_marks(connection: Connection, server: str) -> None:
    """The claims of `server` count its guest's I/O from 0 again: a new QEMU (a dumped server
    restored) starts its counters at 0 while the claims stayed."""
    connection.execute(
        update(claims)
        .where(claims.c.kind == "guest", claims.c.holder == server)
        .values({claims.c[f"guest_{name}"]: 0 for name in IO_COUNTERS})
    )
