"""A database migrated by a newer version (the code rolled back after an upgrade): this
version refuses it, naming both schemas and what to do, and changes nothing; the daemon and the
admin tool say so in one line, no traceback."""

import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from openhosting.errors import FailedError
from openhosting.store.database import open_engine
from testbed.daemon_process import BIN, create_user, free_port

FUTURE = "0099_from_a_newer_version"


def _date_from_the_future(database: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    engine.dispose()


def test_a_database_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    database = tmp_path / "openhosting.sqlite"
    open_engine(database).dispose()
    _date_from_the_future(database)
    before = database.read_bytes()
    with pytest.raises(FailedError) as refused:
        open_engine(database)
    assert f"schema {FUTURE}; this version knows up to" in refused.value.message
    assert "restore the backup taken before the upgrade" in refused.value.message
    assert database.read_bytes() == before


def test_the_daemon_and_the_admin_tool_name_it_without_a_traceback(tmp_path: Path) -> None:
    state = tmp_path / "state"
    create_user(state)
    _date_from_the_future(state / "openhosting.sqlite")
    env = {**os.environ, "OH_API_METRICS_LISTEN": ""}
    for command in (
        [str(BIN / "openhostingd"), "--state-dir", str(state), "--listen",
         f"127.0.0.1:{free_port()}"],
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "user", "list"],
    ):  # fmt: skip
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, done.stderr
        assert "was migrated by a newer version of Open Hosting" in done.stderr
        assert "Traceback" not in done.stderr
