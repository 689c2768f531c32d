"""The same migrations make the same schema, tables.py's, on SQLite and on PostgreSQL, and
undo it all the way down."""

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from openhosting.store.database import MIGRATIONS, create_store_engine, migrate
from openhosting.store.tables import metadata
from testbed.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An engine on a database without a single table, on each engine in turn."""
    if request.param == "sqlite":
        engine = create_store_engine(f"sqlite:///{tmp_path / 'state.db'}")
        yield engine
        engine.dispose()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.new_database(migrated=False)
    engine = create_store_engine(server.url(name))
    yield engine
    engine.dispose()
    server.drop_database(name)


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrations_make_the_tables_of_tables_py(empty_engine: Engine) -> None:
    migrate(empty_engine)
    assert _differences(empty_engine) == []


def test_migrations_go_down_to_nothing_and_up_again(empty_engine: Engine) -> None:
    migrate(empty_engine)
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with empty_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    migrate(empty_engine)
    assert _differences(empty_engine) == []
