"""A database migrated only up to an older revision, with one user: for the tests of a
migration that changes rows made before it."""

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection

from openhosting.store.database import MIGRATIONS


def upgrade_with_user(connection: Connection, revision: str, user: str) -> None:
    """Migrate the database of `connection` up to `revision` and add user `user`."""
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    alembic.attributes["connection"] = connection
    command.upgrade(alembic, revision)
    connection.execute(
        sa.text("INSERT INTO users (uuid, key_hash, created_at) VALUES (:u, :h, 0)"),
        {"u": user, "h": "0" * 64},
    )
