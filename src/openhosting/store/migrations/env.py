"""Alembic environment: runs migrations on the connection `store.database.migrate` passes.

Migrations use `op.batch_alter_table` for ALTERs SQLite cannot do in place: on SQLite it
copies the table, on PostgreSQL it is a plain ALTER TABLE (recreate="auto"). Autogenerate
writes batch operations only for SQLite, the engine that needs them.
"""

from alembic import context

from openhosting.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
