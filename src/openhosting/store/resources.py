"""Queries on the resources table (IPs and VLANs) and on the NICs active servers hold."""

from typing import Any

from sqlalchemy import Connection, String, bindparam, delete, func, insert, or_, select, update

from openhosting.store.reader import Reader
from openhosting.store.records import NicRecord, ResourceRecord
from openhosting.store.tables import resources, server_nics, servers

# -- resources -----------------------------------------------------------------------------


# Built once, their values bound at each execute (see store/drives.py for the cost of a
# statement built per call).
_INSERT_RESOURCE = insert(resources)
_RESOURCE_BY_NAME = select(resources).where(
    resources.c.type == bindparam("b_type"), resources.c.resource == bindparam("b_resource")
)
_RESOURCE_NAMES = select(resources.c.resource).where(resources.c.type == bindparam("b_type"))


def insert_resource(connection: Connection, **values: Any) -> None:
    connection.execute(_INSERT_RESOURCE, values)


def get_resource(connection: Connection, kind: str, resource: str) -> ResourceRecord | None:
    parameters = {"b_type": kind, "b_resource": resource}
    row = connection.execute(_RESOURCE_BY_NAME, parameters).mappings().first()
    return ResourceRecord.from_row(row) if row is not None else None


def resources_of(
    connection: Connection, user: str, kind: str | None = None
) -> list[ResourceRecord]:
    query = select(resources).where(resources.c.user == user)
    if kind is not None:
        query = query.where(resources.c.type == kind)
    query = query.order_by(resources.c.type, resources.c.created_at, resources.c.resource)
    return [ResourceRecord.from_row(row) for row in connection.execute(query).mappings()]


# For the Reader: how many resources `user` has (of `type`, or every type for NULL).
RESOURCE_COUNT_BY_USER = (
    select(func.count())
    .select_from(resources)
    .where(resources.c.user == bindparam("user"))
    .where(or_(bindparam("type", type_=String).is_(None), resources.c.type == bindparam("type")))
)

# For the Reader (store/reader.py): `resources/list` rows of `user`, every type.
RESOURCE_LIST_BY_USER = (
    select(resources.c.type, resources.c.resource)
    .where(resources.c.user == bindparam("user"))
    .order_by(resources.c.type, resources.c.created_at, resources.c.resource)
)


def count_resources(connection: Connection, user: str, kind: str) -> int:
    query = select(func.count()).where(resources.c.user == user, resources.c.type == kind)
    return int(connection.execute(query).scalar_one())


def resource_names(connection: Connection, kind: str) -> set[str]:
    """Every resource of `kind`, whoever owns it."""
    return set(connection.execute(_RESOURCE_NAMES, {"b_type": kind}).scalars())


def update_resource(connection: Connection, kind: str, resource: str, **values: Any) -> None:
    connection.execute(
        update(resources)
        .where(resources.c.type == kind, resources.c.resource == resource)
        .values(**values)
    )


def delete_resource(connection: Connection, kind: str, resource: str) -> None:
    connection.execute(
        delete(resources).where(resources.c.type == kind, resources.c.resource == resource)
    )


# -- NICs of active servers ----------------------------------------------------------------


# Built once, their values bound at each execute: a server's start and stop run them (see
# store/drives.py for the cost of a statement built per call).
_INSERT_NIC = insert(server_nics)
_NICS_OF_SERVER = (
    select(server_nics)
    .where(server_nics.c.server == bindparam("b_server"))
    .order_by(server_nics.c.nic)
)
_HELD_ADDRESSES = select(server_nics.c.address).where(server_nics.c.address.is_not(None))
_DELETE_NICS = delete(server_nics).where(server_nics.c.server == bindparam("b_server"))


def insert_nic(connection: Connection, **values: Any) -> None:
    connection.execute(_INSERT_NIC, values)


def nics_of(connection: Connection, server: str) -> list[NicRecord]:
    rows = connection.execute(_NICS_OF_SERVER, {"b_server": server}).mappings()
    return [NicRecord.from_row(row) for row in rows]


# For the Reader (store/reader.py): the NICs of every active server of `user`, by server, in
# one query for a `servers/info` (not one per server). Through the servers' index by user and
# the NICs' key (server, nic): `server_nics.user` has no index of its own.
NICS_OF_USERS_SERVERS = (
    select(server_nics)
    .join(servers, servers.c.uuid == server_nics.c.server)
    .where(servers.c.user == bindparam("user"))
    .order_by(server_nics.c.server, server_nics.c.nic)
)


def read_nics_of_users_servers(reader: Reader, user: str) -> list[NicRecord]:
    """The NICs of every active server of `user` (NICs_OF_USERS_SERVERS), through `reader`."""
    return [NicRecord.from_row(row) for row in reader.mappings(NICS_OF_USERS_SERVERS, user=user)]


def all_nics(connection: Connection) -> list[NicRecord]:
    query = select(server_nics).order_by(server_nics.c.server, server_nics.c.nic)
    return [NicRecord.from_row(row) for row in connection.execute(query).mappings()]


def held_addresses(connection: Connection) -> set[str]:
    return set(connection.execute(_HELD_ADDRESSES).scalars())


def holder_of_address(connection: Connection, address: str) -> str | None:
    query = select(server_nics.c.server).where(server_nics.c.address == address)
    return connection.execute(query).scalars().first()


def holder_of_mac(connection: Connection, network: str, mac: str) -> str | None:
    query = select(server_nics.c.server).where(
        server_nics.c.network == network, server_nics.c.mac == mac
    )
    return connection.execute(query).scalars().first()


def users_of_network(connection: Connection, network: str) -> list[str]:
    query = select(server_nics.c.server).where(server_nics.c.network == network)
    return sorted(set(connection.execute(query).scalars()))


def delete_nics(connection: Connection, server: str) -> None:
    connection.execute(_DELETE_NICS, {"b_server": server})
