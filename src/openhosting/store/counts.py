"""Counts over the whole platform, for monitoring: grouped in the database, never row by row."""

from sqlalchemy import Connection, func, select

from openhosting.model.server import ServerConfig
from openhosting.store.drives import SIZE_SUM
from openhosting.store.records import decode_server_config
from openhosting.store.tables import drives, jobs, servers


def drives_by_tier(connection: Connection) -> dict[str, tuple[int, int]]:
    """tier → (how many drives, their sizes in bytes)."""
    query = select(drives.c.tier, func.count(), SIZE_SUM)
    return {
        tier: (int(count), int(size))
        for tier, count, size in connection.execute(query.group_by(drives.c.tier))
    }


def jobs_by_state(connection: Connection) -> dict[str, int]:
    query = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    return {state: int(count) for state, count in connection.execute(query)}


def server_statuses(connection: Connection) -> list[tuple[str, str, ServerConfig]]:
    """(uuid, stored status, configuration) of every server."""
    query = select(servers.c.uuid, servers.c.status, servers.c.config)
    return [
        (uuid, status, decode_server_config(text))
        for uuid, status, text in connection.execute(query)
    ]
