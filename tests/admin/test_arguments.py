"""`--limit N` of `audit`, `jobs list` and `account usage`: a whole number the database's
LIMIT holds, or a usage error naming the option, before anything is opened."""

from pathlib import Path

import pytest

from openhosting.admin.tool import main

USER = "3f1c0000-0000-4000-8000-000000000000"
LISTINGS = [["audit"], ["jobs", "list"], ["account", "usage", USER]]


@pytest.fixture
def state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == 0
    capsys.readouterr()
    return state


@pytest.mark.parametrize("listing", LISTINGS, ids=" ".join)
@pytest.mark.parametrize("limit", ["0", "-1", "99999999999999999999", "2147483648", "ten"])
def test_a_limit_no_query_holds_is_a_usage_error_not_a_traceback(
    state: Path, capsys: pytest.CaptureFixture[str], listing: list[str], limit: str
) -> None:
    # 99999999999999999999 was a traceback from SQLite's INTEGER; -1 listed everything
    # (audit) or nothing (account usage) with status 0.
    with pytest.raises(SystemExit) as refused:
        main(["--state-dir", str(state), *listing, "--limit", limit])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit: expected a whole number from 1 to 2147483647" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("listing", LISTINGS[:2], ids=" ".join)
def test_the_largest_limit_lists(
    state: Path, capsys: pytest.CaptureFixture[str], listing: list[str]
) -> None:
    assert main(["--state-dir", str(state), *listing, "--limit", "2147483647"]) == 0
    assert capsys.readouterr().err == ""
