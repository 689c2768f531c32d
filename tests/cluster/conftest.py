"""Fixtures of the cluster tests: two API daemons on one PostgreSQL (tests/cluster/nodes.py).

The session's one PostgreSQL is tests/conftest.py's `postgres_server` (tests/postgres.py);
each test gets a database of its own. Every test in this folder is marked `integration`: it
drives real daemons.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.nodes import Cluster

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """Daemons `a` and `b` on a database of this test's own; stopped afterwards."""
    made = Cluster(tmp_path, postgres_url)
    try:
        yield made
    finally:
        made.stop()
