"""Queries on the audit table."""

from typing import Any

from sqlalchemy import Connection, insert, select

from openhosting.store.records import AuditRecord
from openhosting.store.tables import audit

# Built once, its values bound at each execute: every change a user asks for writes a row
# (see store/drives.py for the cost of a statement built per call).
_INSERT_ENTRY = insert(audit)


def insert_entry(connection: Connection, **values: Any) -> None:
    connection.execute(_INSERT_ENTRY, values)


def entries(
    connection: Connection, object_id: str | None, user: str | None, limit: int
) -> list[AuditRecord]:
    query = select(audit)
    if object_id is not None:
        query = query.where(audit.c.object == object_id)
    if user is not None:
        query = query.where(audit.c.user == user)
    query = query.order_by(audit.c.id.desc()).limit(limit)
    return [AuditRecord.from_row(row) for row in connection.execute(query).mappings()][::-1]
