"""Queries on the users table."""

from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, insert, select, update

from openhosting.store.records import UserRecord
from openhosting.store.tables import PLATFORM_USER, drives, resources, servers, users

# Every user but the platform user that owns the standard drives.
_PEOPLE = users.c.uuid != PLATFORM_USER


def insert_user(connection: Connection, **values: Any) -> None:
    connection.execute(insert(users).values(**values))


# For the Reader (store/reader.py): the stored key hash of user `uuid`.
KEY_HASH_BY_UUID = select(users.c.key_hash).where(users.c.uuid == bindparam("uuid"))


def get_user(connection: Connection, uuid: str) -> UserRecord | None:
    query = select(users).where(users.c.uuid == uuid, _PEOPLE)
    row = connection.execute(query).mappings().first()
    return UserRecord.from_row(row) if row is not None else None


def list_users(connection: Connection) -> list[UserRecord]:
    query = select(users).where(_PEOPLE).order_by(users.c.created_at, users.c.uuid)
    return [UserRecord.from_row(row) for row in connection.execute(query).mappings()]


def count_users(connection: Connection) -> int:
    return len(connection.execute(select(users.c.uuid).where(_PEOPLE).limit(1)).all())


def update_user(connection: Connection, uuid: str, **values: Any) -> bool:
    """Change columns of user `uuid`; False when there is no such user."""
    query = update(users).where(users.c.uuid == uuid, _PEOPLE).values(**values)
    result = connection.execute(query)
    return result.rowcount > 0


# What a user owns that deleting the user's row would take with it (the tables' ON DELETE
# CASCADE): rows whose files, VMs and addresses would stay behind with no row to name them.
_OWNED = {"drives": drives, "servers": servers, "resources": resources}


def delete_user(connection: Connection, uuid: str) -> bool:
    """Delete user `uuid` if it owns no drive, server or resource (in the same statement, so
    nothing made meanwhile is taken by the cascade); False if it does, or there is none."""
    owns_nothing = [~exists().where(table.c.user == uuid) for table in _OWNED.values()]
    query = delete(users).where(users.c.uuid == uuid, _PEOPLE, *owns_nothing)
    return connection.execute(query).rowcount > 0


def owned_objects(connection: Connection, uuid: str) -> dict[str, int]:
    """How many drives, servers and resources user `uuid` owns, each by its table's name."""
    return {
        name: connection.execute(
            select(func.count()).select_from(table).where(table.c.user == uuid)
        ).scalar_one()
        for name, table in _OWNED.items()
    }
