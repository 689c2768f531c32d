"""Row locks that make a read-check-write safe when several processes write at once.

A check (a limit, the claims on a drive) and the write it allows are one transaction; taking
the row that the check is about with `SELECT … FOR UPDATE` first makes every other such
transaction on that row wait until this one commits, and then see what it wrote (PostgreSQL's
READ COMMITTED reads each statement anew). Two API nodes on one PostgreSQL thus never both
pass a check that only one of them should.

On SQLite the lock clause is left out (SQLAlchemy renders nothing for it): there one process
writes, but not only from its event loop: a server's claims, an imaging job's submit and a
drive's destroy run in worker threads, on connections of their own. SQLite has no row
locks, and Python's driver begins a transaction only at its first write, so the reads of a
check run outside it: two threads both read "no claim" and both insert one (a server ran
on the drive an imaging job was writing). `lock_drives` therefore takes the database's
write lock there, with a write that changes nothing: from it to the commit no other
connection writes, and what the transaction reads is what it commits on.

Order, so two transactions never wait on each other: a user's row, then the address pool,
then the VNI space, then resources' rows, then drives' rows (by UUID).
"""

from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, false, select, text, update

from openhosting.store.tables import drives, resources, users

# Any fixed number, the same in every process: the advisory lock of the address pool.
ADDRESS_POOL_LOCK_KEY = 0x6F68_6970  # "ohip"
# The advisory lock of the VLANs' VXLAN identifiers (store/vnis.py).
VNI_SPACE_LOCK_KEY = 0x6F68_766E  # "ohvn"


# Built once, their values bound at each execute (see store/drives.py for the cost of a
# statement built per call): every change a user asks for takes their row.
_LOCK_USER = select(users.c.uuid).where(users.c.uuid == bindparam("b_uuid")).with_for_update()


def lock_user(connection: Connection, user: str) -> None:
    """Hold the row of `user` until the transaction ends (limits, balance)."""
    connection.execute(_LOCK_USER, {"b_uuid": user})


_LOCK_DRIVES = (
    select(drives.c.uuid)
    .where(drives.c.uuid.in_(bindparam("b_uuids", expanding=True)))
    .order_by(drives.c.uuid)
    .with_for_update()
)


# SQLite: a write matching no row still takes the database's write lock (and begins the
# driver's transaction).
_SQLITE_WRITE_LOCK = update(drives).where(false()).values(uuid=drives.c.uuid)


def lock_drives(connection: Connection, uuids: Iterable[str]) -> set[str]:
    """Hold the rows of the drives `uuids` (those that exist) until the transaction ends
    (their claims, imaging jobs, destroy), on SQLite every writer; the uuids of those that
    exist."""
    wanted = sorted(set(uuids))
    if not wanted:
        return set()
    if connection.dialect.name == "sqlite":
        connection.execute(_SQLITE_WRITE_LOCK)
    return {str(row.uuid) for row in connection.execute(_LOCK_DRIVES, {"b_uuids": wanted})}


def lock_resource(connection: Connection, kind: str, resource: str) -> None:
    """Hold the row of resource `kind` `resource` (if it exists) until the transaction ends:
    a destroy and a server's hold of it (an address, a VLAN) wait for each other."""
    query = select(resources.c.resource).where(
        resources.c.type == kind, resources.c.resource == resource
    )
    connection.execute(query.with_for_update())


def lock_address_pool(connection: Connection) -> None:
    """Hold the platform's address pool until the transaction ends (PostgreSQL): an address is
    picked among those no IP resource and no server holds, two tables that no one row stands
    for. Nothing on SQLite, whose writer is one event loop."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADDRESS_POOL_LOCK_KEY}
        )


def lock_vni_space(connection: Connection) -> None:
    """Hold the VLANs' VNIs until the transaction ends (PostgreSQL): a new VLAN's VNI is
    picked among those no VLAN holds, and no one row stands for the free ones. Nothing on
    SQLite, whose writer is one event loop."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": VNI_SPACE_LOCK_KEY})
