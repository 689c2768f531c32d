"""A process killed in the middle of a migration of a SQLite database: the next start
migrates it, as if the killed one had never begun (an upgrade's first start SIGKILLed by
systemd's stop timeout, a power cut)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from openhosting.store.database import MIGRATIONS, create_store_engine, open_engine
from tests.store.old_schema import upgrade_with_user

OLD_REVISION = "0008_guest_io"
USER = "3fb23253-3833-428c-b977-dd1198786ac9"

# Migrates the database of argv[1] and SIGKILLs itself right after its argv[2]-th schema
# statement: no Python cleanup, no rollback, as systemd's SIGKILL.
KILLED_MIGRATION = """
import os, signal, sys
from sqlalchemy import event
from openhosting.store.database import create_store_engine, migrate

engine = create_store_engine(sys.argv[1])
kill_after = int(sys.argv[2])
seen = 0

@event.listens_for(engine, "after_cursor_execute")
def kill(connection, cursor, statement, parameters, context, executemany):
    global seen
    if statement.lstrip().upper().startswith(("ALTER", "CREATE", "DROP")):
        seen += 1
        if seen == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

migrate(engine)
"""


def _head() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    (head,) = script.get_heads()
    return head


@pytest.mark.parametrize("kill_after", [1, 2, 3, 7, 15])
def test_a_migration_killed_midway_is_done_whole_at_the_next_start(
    tmp_path: Path, kill_after: int
) -> None:
    url = f"sqlite:///{tmp_path / 'openhosting.sqlite'}"
    old = create_store_engine(url)
    with old.begin() as connection:
        upgrade_with_user(connection, OLD_REVISION, USER)
    old.dispose()

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MIGRATION, url, str(kill_after)],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()

    # The next start: what the killed one did is not half there.
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == _head()
            assert USER in connection.execute(sa.text("SELECT uuid FROM users")).scalars().all()
            columns = {column["name"] for column in sa.inspect(connection).get_columns("users")}
            assert "max_drive_bytes_by_tier" in columns
            assert connection.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        engine.dispose()
