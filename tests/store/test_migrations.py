"""The same migrations make the same schema, tables.py's, on SQLite and on PostgreSQL, and
undo it all the way down."""

import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
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


def test_a_new_migration_has_the_short_header(tmp_path: Path) -> None:
    # A copy of the migrations folder: `alembic revision` writes into it.
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations))
    heads = ScriptDirectory.from_config(config).get_heads()

    command.revision(config, "Widgets: what they are.", rev_id="0099_widgets")

    written = next((migrations / "versions").glob("0099_widgets*.py")).read_text()
    assert written.startswith('"""Widgets: what they are."""\n')
    for default in ("branch_labels", "depends_on", "Revision ID", "Revises"):
        assert default not in written
    script = ScriptDirectory.from_config(config).get_revision("0099_widgets")
    assert script is not None
    assert script.down_revision == (heads[0] if len(heads) == 1 else tuple(heads))
    assert script.branch_labels == set() and script.dependencies is None
