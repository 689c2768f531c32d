"""`openhosting-admin user create`: what a name may be, alike on both engines."""

from pathlib import Path

import pytest

from openhosting.admin.tool import main
from openhosting.wire.text import parse_properties


@pytest.mark.usefixtures("on_both_stores")
def test_a_user_name_longer_than_its_column_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL enforces the column's 256 characters: it was a traceback there.
    state = ["--state-dir", str(tmp_path / "state")]
    assert main([*state, "user", "create", "--name", "x" * 257]) == 1
    assert "at most 256 characters" in capsys.readouterr().err
    assert main([*state, "user", "create", "--name", "x" * 256]) == 0
    assert parse_properties(capsys.readouterr().out)["name"] == "x" * 256
