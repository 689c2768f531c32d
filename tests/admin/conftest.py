"""Fixtures of the operator's tool's tests."""

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def on_both_stores(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test twice: on the state directory's SQLite file, then on a PostgreSQL
    database of its own (named by `OH_STORE_URL`, as an operator sets it)."""
    if request.param == "postgresql":
        monkeypatch.setenv("OH_STORE_URL", request.getfixturevalue("postgres_url"))
    return str(request.param)
