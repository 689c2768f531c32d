"""Queries on the servers table, and on the claims servers hold on drives."""

from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from openhosting.store.reader import Reader
from openhosting.store.records import ClaimRecord, ServerRecord, decode_server_config
from openhosting.store.tables import claims, servers

# Built once, their values bound at each execute, as a server's create, start and stop run
# them (see store/drives.py for the cost of a statement built per call); `b_` names where a
# column's own name is reserved for the values a row gets.
_INSERT_SERVER = insert(servers)
_UPDATE_SERVER = update(servers).where(servers.c.uuid == bindparam("b_uuid"))
_DELETE_SERVER = delete(servers).where(servers.c.uuid == bindparam("b_uuid"))
_INSERT_CLAIM = insert(claims)
_DELETE_GUEST_CLAIMS = delete(claims).where(
    claims.c.kind == "guest", claims.c.holder == bindparam("b_holder")
)
_CLAIMS_ON_DRIVES = select(claims).where(claims.c.drive.in_(bindparam("b_drives", expanding=True)))


def insert_server(connection: Connection, **values: Any) -> None:
    connection.execute(_INSERT_SERVER, values)


def get_server(connection: Connection, uuid: str) -> ServerRecord | None:
    row = connection.execute(SERVER_BY_UUID, {"uuid": uuid}).mappings().first()
    return ServerRecord.from_row(row) if row is not None else None


def servers_of(connection: Connection, user: str) -> list[ServerRecord]:
    query = select(servers).where(servers.c.user == user)
    rows = connection.execute(query.order_by(servers.c.created_at, servers.c.uuid)).mappings()
    return [ServerRecord.from_row(row) for row in rows]


def servers_with_status(connection: Connection, status: str) -> list[ServerRecord]:
    query = select(servers).where(servers.c.status == status).order_by(servers.c.uuid)
    return [ServerRecord.from_row(row) for row in connection.execute(query).mappings()]


# For the Reader (store/reader.py): `servers/list` rows of `user`.
SERVER_LIST_BY_USER = (
    select(servers.c.uuid, servers.c.config)
    .where(servers.c.user == bindparam("user"))
    .order_by(servers.c.created_at, servers.c.uuid)
)


# For the Reader: a server's row by `uuid`, and every server of `user` oldest first
# (get_server and servers_of for the infos, without SQLAlchemy's cost per execute).
SERVER_BY_UUID = select(servers).where(servers.c.uuid == bindparam("uuid"))
SERVERS_BY_USER = (
    select(servers)
    .where(servers.c.user == bindparam("user"))
    .order_by(servers.c.created_at, servers.c.uuid)
)


def read_server(reader: Reader, uuid: str) -> ServerRecord | None:
    """`get_server` through the Reader."""
    rows = reader.mappings(SERVER_BY_UUID, uuid=uuid)
    return ServerRecord.from_row(rows[0]) if rows else None


def read_servers_of(reader: Reader, user: str) -> list[ServerRecord]:
    """`servers_of` through the Reader."""
    return [ServerRecord.from_row(row) for row in reader.mappings(SERVERS_BY_USER, user=user)]


def read_server_sizes_of(reader: Reader, user: str) -> list[tuple[str, int, int]]:
    """(uuid, cpu, mem) of every server of `user`, oldest first, for `servers/list`: through
    the Reader, answered from memory while nothing changed (`Reader.all_cached`)."""
    rows = reader.all_cached(SERVER_LIST_BY_USER, user=user)
    sizes = []
    for uuid, text in rows:
        config = decode_server_config(text)
        sizes.append((uuid, config.cpu, config.mem))
    return sizes


# For the Reader: how many servers `user` has (whether their info is built off the loop).
SERVER_COUNT_BY_USER = (
    select(func.count()).select_from(servers).where(servers.c.user == bindparam("user"))
)


def update_server(connection: Connection, uuid: str, **values: Any) -> None:
    connection.execute(_UPDATE_SERVER, {"b_uuid": uuid, **values})


def delete_server(connection: Connection, uuid: str) -> None:
    connection.execute(_DELETE_SERVER, {"b_uuid": uuid})


def used_vnc_displays(connection: Connection) -> set[int]:
    query = select(servers.c.vnc_display).where(servers.c.vnc_display.is_not(None))
    return {int(display) for display in connection.execute(query).scalars()}


def add_guest_claims(
    connection: Connection, user: str, server: str, devices: list[tuple[str, str, bool]]
) -> None:
    """Claim each (drive, device, exclusive) for `server`."""
    for drive, device, exclusive in devices:
        connection.execute(_INSERT_CLAIM, {
            "drive": drive, "user": user, "kind": "guest", "holder": server, "device": device,
            "exclusive": exclusive,
        })  # fmt: skip


def remove_guest_claims(connection: Connection, server: str) -> None:
    connection.execute(_DELETE_GUEST_CLAIMS, {"b_holder": server})


def remove_guest_claims_except(connection: Connection, active: set[str]) -> int:
    """Remove the guest claims of every server not in `active`; returns how many there were."""
    query = delete(claims).where(claims.c.kind == "guest")
    if active:
        query = query.where(claims.c.holder.not_in(sorted(active)))
    return int(connection.execute(query).rowcount)


def claimants_not_running(connection: Connection) -> set[str]:
    """The servers holding guest claims whose row is neither `active` nor `dumped`: a start
    under way, or one whose API node died before its server was active."""
    running = select(servers.c.uuid).where(servers.c.status.in_(["active", "dumped"]))
    query = (
        select(claims.c.holder)
        .distinct()
        .where(claims.c.kind == "guest", claims.c.holder.not_in(running))
    )
    return set(connection.execute(query).scalars())


def claims_on_drives(connection: Connection, drives: list[str]) -> list[ClaimRecord]:
    rows = connection.execute(_CLAIMS_ON_DRIVES, {"b_drives": list(drives)}).mappings()
    return [ClaimRecord.from_row(row) for row in rows]
