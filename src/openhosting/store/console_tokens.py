"""Queries on web console tokens (the `console_tokens` table)."""

from sqlalchemy import Connection, delete, insert, select, update

from openhosting.store.records import ConsoleTokenRecord
from openhosting.store.tables import console_tokens


def insert_token(connection: Connection, token: ConsoleTokenRecord) -> None:
    connection.execute(insert(console_tokens).values(**token.to_row()))


def use_token(connection: Connection, token_hash: str, now: float) -> bool:
    """Mark the token used, if it is unused and unexpired: whether this call did. One
    UPDATE, so of two concurrent uses exactly one wins."""
    result = connection.execute(
        update(console_tokens)
        .where(
            console_tokens.c.token_hash == token_hash,
            console_tokens.c.used_at.is_(None),
            console_tokens.c.expires > now,
        )
        .values(used_at=now)
    )
    return result.rowcount == 1


def get_token(connection: Connection, token_hash: str) -> ConsoleTokenRecord | None:
    row = connection.execute(
        select(console_tokens).where(console_tokens.c.token_hash == token_hash)
    ).first()
    return ConsoleTokenRecord.from_row(row._mapping) if row is not None else None


def prune_expired(connection: Connection, now: float) -> int:
    """Forget the tokens that can no longer be used; how many went."""
    return connection.execute(
        delete(console_tokens).where(console_tokens.c.expires <= now)
    ).rowcount


def delete_tokens_of(connection: Connection, user: str) -> int:
    """Forget every token of `user` (their key was rotated); how many went."""
    return connection.execute(delete(console_tokens).where(console_tokens.c.user == user)).rowcount
