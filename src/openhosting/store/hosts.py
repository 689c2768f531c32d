"""Queries on the platform's hosts (the `hosts` table) and what their drives hold."""

import json

from sqlalchemy import Connection, insert, select, update

from openhosting.host_capacity import HostCapacity
from openhosting.store.drives import SIZE_SUM
from openhosting.store.records import HostRecord, decode_server_config
from openhosting.store.tables import drives, hosts, servers


def register_host(connection: Connection, host: HostRecord) -> None:
    """Record `host` with its capacity, as new or in place of what it said before (its
    `created_at` kept), and give it the drives no host holds yet (those from before hosts)."""
    columns = host.to_row()
    # Select then write rather than an upsert: one statement for SQLite and PostgreSQL alike.
    known = connection.execute(select(hosts.c.name).where(hosts.c.name == host.name)).first()
    if known is None:
        connection.execute(insert(hosts).values(**columns))
    else:
        del columns["created_at"]
        del columns["agent"]  # the operator's (`host set`), not the host's measure
        if not host.vxlan_local:
            del columns["vxlan_local"]  # unset here: the operator's `host set` keeps
        connection.execute(update(hosts).where(hosts.c.name == host.name).values(**columns))
    connection.execute(update(drives).where(drives.c.host == "").values(host=host.name))


def add_host(connection: Connection, host: HostRecord) -> None:
    """Record a new host (one with an agent: the drives from before hosts stay unplaced)."""
    connection.execute(insert(hosts).values(**host.to_row()))


def server_use_by_host(connection: Connection, local: str) -> dict[str, tuple[int, int]]:
    """host → the cpu (MHz) and mem (MiB) of its active servers; a server recorded with no
    host runs on `local` (the daemon's own, as before host agents)."""
    query = select(servers.c.host, servers.c.config).where(servers.c.status == "active")
    used: dict[str, tuple[int, int]] = {}
    for host, text in connection.execute(query):
        config = decode_server_config(text)
        mhz, mb = used.get(host or local, (0, 0))
        used[host or local] = (mhz + config.cpu, mb + config.mem)
    return used


def set_agent(connection: Connection, name: str, agent: str) -> bool:
    """Record the address of host `name`'s agent (empty: none): whether the host exists."""
    result = connection.execute(update(hosts).where(hosts.c.name == name).values(agent=agent))
    return result.rowcount == 1


def heartbeat(
    connection: Connection, name: str, now: float, capacity: HostCapacity | None = None
) -> bool:
    """Say that host `name` is alive at `now` (offering `capacity`, as its agent measured
    it, if given): whether it is registered."""
    values: dict[str, object] = {"heartbeat_at": now, "state": "online"}
    if capacity is not None:
        values.update(
            cores=capacity.cores,
            core_mhz=capacity.core_mhz,
            memory_mb=capacity.memory_mb,
            disk_bytes_by_tier=json.dumps(capacity.disk_bytes_by_tier, sort_keys=True),
        )
    result = connection.execute(update(hosts).where(hosts.c.name == name).values(**values))
    return result.rowcount == 1


def mark_offline(connection: Connection, limit: float) -> int:
    """Hosts whose last heartbeat is older than `limit` are `offline` (their next heartbeat
    puts them `online` again): how many were marked now."""
    result = connection.execute(
        update(hosts)
        .where(hosts.c.heartbeat_at < limit, hosts.c.state != "offline")
        .values(state="offline")
    )
    return result.rowcount


# Built once: a new drive's or server's placement reads both (see store/drives.py for the
# cost of a statement built per call).
_HOSTS_BY_NAME = select(hosts).order_by(hosts.c.name)
_DRIVE_BYTES_BY_HOST = select(drives.c.host, drives.c.tier, SIZE_SUM).group_by(
    drives.c.host, drives.c.tier
)


def list_hosts(connection: Connection) -> list[HostRecord]:
    """Every host, by name."""
    rows = connection.execute(_HOSTS_BY_NAME).mappings()
    return [HostRecord.from_row(row) for row in rows]


def get_host(connection: Connection, name: str) -> HostRecord | None:
    row = connection.execute(select(hosts).where(hosts.c.name == name)).mappings().first()
    return HostRecord.from_row(row) if row is not None else None


def drive_bytes_by_host(connection: Connection) -> dict[tuple[str, str], int]:
    """(host, tier) → the sizes of the drives there, in bytes (what they may grow to fill)."""
    return {
        (host, tier): int(size) for host, tier, size in connection.execute(_DRIVE_BYTES_BY_HOST)
    }


def hosts_of_drives(
    connection: Connection, uuids: list[str], user: str | None = None
) -> dict[str, str]:
    """drive uuid → its host, for those of `uuids` that exist (and are `user`'s, if given:
    where another user's drives live is not theirs to learn)."""
    if not uuids:
        return {}
    query = select(drives.c.uuid, drives.c.host).where(drives.c.uuid.in_(uuids))
    if user is not None:
        query = query.where(drives.c.user == user)
    return {uuid: host for uuid, host in connection.execute(query)}
