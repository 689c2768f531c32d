"""Queries on dashboard sessions (the `web_sessions` table)."""

from sqlalchemy import Connection, delete, insert, select

from openhosting.store.tables import users, web_sessions


def insert_session(
    connection: Connection, token_hash: str, user: str, created: float, expires: float
) -> None:
    connection.execute(
        insert(web_sessions).values(
            token_hash=token_hash, user=user, created=created, expires=expires
        )
    )


def live_session(connection: Connection, token_hash: str, now: float) -> tuple[str, float] | None:
    """The (user, expires) of an unexpired session whose user still exists, else None."""
    row = connection.execute(
        select(web_sessions.c.user, web_sessions.c.expires)
        .join(users, users.c.uuid == web_sessions.c.user)
        .where(web_sessions.c.token_hash == token_hash, web_sessions.c.expires > now)
    ).first()
    return (str(row.user), float(row.expires)) if row is not None else None


def delete_session(connection: Connection, token_hash: str) -> bool:
    """Forget one session: whether it existed."""
    return (
        connection.execute(
            delete(web_sessions).where(web_sessions.c.token_hash == token_hash)
        ).rowcount
        == 1
    )


def delete_oldest_sessions_of(connection: Connection, user: str, keep: str, live: int) -> int:
    """Forget the sessions of `user` but `keep` and their `live - 1` newest others, so that
    `live` are left; how many went."""
    others = web_sessions.c.user == user, web_sessions.c.token_hash != keep
    beyond = (
        select(web_sessions.c.token_hash)
        .where(*others)
        .order_by(web_sessions.c.created.desc(), web_sessions.c.token_hash)
        .offset(live - 1)
    )
    query = delete(web_sessions).where(*others, web_sessions.c.token_hash.in_(beyond))
    return int(connection.execute(query).rowcount)


def delete_sessions_of(connection: Connection, user: str) -> int:
    """Forget every session of `user`: how many went."""
    return connection.execute(delete(web_sessions).where(web_sessions.c.user == user)).rowcount


def prune_expired(connection: Connection, now: float) -> int:
    """Forget the sessions that have expired; how many went."""
    return connection.execute(delete(web_sessions).where(web_sessions.c.expires <= now)).rowcount
