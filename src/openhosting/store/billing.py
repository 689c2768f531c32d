"""Queries for billing: what each user uses now, balances, and the usage record."""

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from openhosting.store import drives as drive_store
from openhosting.store.records import UsageRecord, UserRecord, decode_server_config
from openhosting.store.tables import drives, resources, servers, usage, users


@dataclass(frozen=True)
class Usage:
    """What one user holds at one moment."""

    drive_bytes: int = 0
    servers: int = 0
    cpu_mhz: int = 0  # of active servers
    mem_mb: int = 0  # of active servers
    ips: int = 0
    vlans: int = 0


# What `current_usage` reads, built once (a server's start and every new drive check it):
# see store/drives.py for the cost of a statement built per call.
_DRIVE_BYTES_OF_USER = select(drive_store.SIZE_SUM).where(drives.c.user == bindparam("b_user"))
_SERVERS_OF_USER = select(servers.c.uuid, servers.c.status, servers.c.config).where(
    servers.c.user == bindparam("b_user")
)
_RESOURCE_COUNTS_OF_USER = (
    select(resources.c.type, func.count())
    .where(resources.c.user == bindparam("b_user"))
    .group_by(resources.c.type)
)


def current_usage(
    connection: Connection,
    user: str,
    excluding_server: str | None = None,
    starting: Collection[str] = (),
) -> Usage:
    """What `user` holds now. The cpu and mem are those of the active servers and of those
    of `starting` (their drives claimed, their VM not yet running, so not yet `active`)."""
    drive_bytes = connection.execute(_DRIVE_BYTES_OF_USER, {"b_user": user}).scalar_one()
    server_rows = connection.execute(_SERVERS_OF_USER, {"b_user": user}).all()
    cpu = mem = 0
    for uuid, status, text in server_rows:
        if (status == "active" or uuid in starting) and uuid != excluding_server:
            config = decode_server_config(text)
            cpu += config.cpu
            mem += config.mem
    counts: dict[str, int] = dict(
        connection.execute(_RESOURCE_COUNTS_OF_USER, {"b_user": user}).all()
    )
    return Usage(
        drive_bytes=int(drive_bytes),
        servers=len(server_rows),
        cpu_mhz=cpu,
        mem_mb=mem,
        ips=int(counts.get("ip", 0)),
        vlans=int(counts.get("vlan", 0)),
    )


# Built once, its value bound at each execute: every change a user asks for checks their
# account (see store/drives.py for the cost of a statement built per call).
_ACCOUNT_BY_UUID = select(users).where(users.c.uuid == bindparam("b_uuid"))


def account_of(connection: Connection, user: str) -> UserRecord | None:
    """The account of `user`, the platform user's too."""
    row = connection.execute(_ACCOUNT_BY_UUID, {"b_uuid": user}).mappings().first()
    return UserRecord.from_row(row) if row is not None else None


def all_accounts(connection: Connection, lock: bool = False) -> list[UserRecord]:
    """Every account a key opens (not the platform user's); with `lock`, their rows held
    until the transaction ends (in one order: store/row_locks.py)."""
    query = select(users).where(users.c.key_hash != "").order_by(users.c.uuid)
    if lock:
        query = query.with_for_update()
    return [UserRecord.from_row(row) for row in connection.execute(query).mappings()]


def charge(connection: Connection, user: str, amount: int, metered_at: float) -> None:
    connection.execute(
        update(users)
        .where(users.c.uuid == user)
        .values(balance=users.c.balance - amount, metered_at=metered_at)
    )


def credit(connection: Connection, user: str, amount: int) -> bool:
    result = connection.execute(
        update(users).where(users.c.uuid == user).values(balance=users.c.balance + amount)
    )
    return result.rowcount > 0


def record_usage(connection: Connection, **values: Any) -> None:
    connection.execute(insert(usage).values(**values))


def usage_columns(held: Usage) -> dict[str, int]:
    """The figures of `held` that a usage row records: all it has a column for (the count of
    servers is not billed)."""
    return {name: value for name, value in dataclasses.asdict(held).items() if name in usage.c}


def usage_of(connection: Connection, user: str, limit: int) -> list[UsageRecord]:
    """The last `limit` usage records of `user`, oldest first."""
    query = select(usage).where(usage.c.user == user).order_by(usage.c.id.desc()).limit(limit)
    return [UsageRecord.from_row(row) for row in connection.execute(query).mappings()][::-1]


def usage_since(connection: Connection, user: str, since: float) -> list[UsageRecord]:
    """The user's usage records that end after `since`, oldest first."""
    query = select(usage).where(usage.c.user == user, usage.c.end > since).order_by(usage.c.start)
    return [UsageRecord.from_row(row) for row in connection.execute(query).mappings()]
