"""Alembic environment: runs migrations on the connection `store.database.migrate` passes."""

from alembic import context

from openhosting.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
