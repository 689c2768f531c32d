"""The rows of operations under way (`operations`), as several API nodes share them.

A node enters an operation on an object after reading the other nodes' live ones, both in one
transaction that holds the object's advisory lock (`pg_advisory_xact_lock`): two nodes
entering on one object take turns, so they never both pass a check only one should.
A row counts while its `lease_until` is ahead; its node renews it while the operation runs.
"""

import hashlib
from collections import Counter
from collections.abc import Collection

from sqlalchemy import Connection, delete, insert, select, text, update

from openhosting.store.tables import operations


def _lock_key(uuid: str) -> int:
    # A signed 64-bit key per object; a clash of two objects only makes them take turns.
    return int.from_bytes(hashlib.sha256(b"operations:" + uuid.encode()).digest()[:8], "big",
                          signed=True)  # fmt: skip


def lock_object(connection: Connection, uuid: str) -> None:
    """Hold object `uuid`'s operations until the transaction ends (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(uuid)})


def others_in_flight(connection: Connection, uuid: str, owner: str, now: float) -> Counter[str]:
    """The kinds of the live operations of nodes other than `owner` on object `uuid`."""
    query = select(operations.c.kind).where(
        operations.c.object == uuid, operations.c.owner != owner, operations.c.lease_until >= now
    )
    return Counter(kind for (kind,) in connection.execute(query))


def objects_of_others(connection: Connection, owner: str, now: float) -> set[str]:
    """The objects with a live operation of a node other than `owner`."""
    query = (
        select(operations.c.object)
        .distinct()
        .where(operations.c.owner != owner, operations.c.lease_until >= now)
    )
    return {uuid for (uuid,) in connection.execute(query)}


def enter(connection: Connection, uuid: str, kind: str, owner: str, until: float) -> int:
    """Record that `owner` runs `kind` on `uuid` until `until` unless renewed: its id."""
    values = {"object": uuid, "kind": kind, "owner": owner, "lease_until": until}
    result = connection.execute(insert(operations).values(**values).returning(operations.c.id))
    return int(result.scalar_one())


def leave(connection: Connection, ids: Collection[int]) -> None:
    """The operations `ids` ended."""
    if ids:
        connection.execute(delete(operations).where(operations.c.id.in_(list(ids))))


def renew(connection: Connection, ids: Collection[int], until: float) -> None:
    """The operations `ids` run on: their leases hold until `until`."""
    if ids:
        query = update(operations).where(operations.c.id.in_(list(ids)))
        connection.execute(query.values(lease_until=until))


def forget_expired(connection: Connection, before: float) -> None:
    """Drop the rows whose lease ended before `before` (their nodes died)."""
    connection.execute(delete(operations).where(operations.c.lease_until < before))
