"""Queries on the audit table."""

from typing import Any

from sqlalchemy import Connection, insert, select

from openhosting.store.records import AuditRecord
from openhosting.store.tables import audit


def insert_entry(connection: Connection, **values: Any) -> None:
    connection.execute(insert(audit).values(**values))


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
