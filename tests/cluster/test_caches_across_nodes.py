"""The caches of an API daemon on PostgreSQL (the per-user listings, authentication) are
dropped by the other node's writes, heard through LISTEN/NOTIFY; while a daemon's listening
connection is down it caches nothing.

A row deleted straight in the database, without a notification, shows whether a daemon
answers from its cache: it keeps listing the drive while its cache holds."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.daemon_process import Account, Api
from tests.cluster.nodes import Cluster

SEEN_WITHIN = 3.0  # seconds: a notification on loopback takes milliseconds


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """Daemons whose own periodic writes (the host's heartbeat: any commit drops every
    cache) stay out of the test's way: the test tells when a cache must hold."""
    made = Cluster(tmp_path, postgres_url, {
        "OH_HOST_HEARTBEAT_SECONDS": "600", "OH_HOST_OFFLINE_SECONDS": "3600",
    })  # fmt: skip
    try:
        yield made
    finally:
        made.stop()


def _listed(api: Api) -> list[str]:
    return api.call("/drives/list").body.decode().split()


def _until(check: object, what: str, timeout: float = SEEN_WITHIN) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _listening(cluster: Cluster, pid: int) -> bool:
    name = f"openhosting-listen-{pid}"
    return bool(cluster.query("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", name))


def _delete_unheard(cluster: Cluster, drive: str) -> None:
    """The drive's row deleted by a connection that sends no notification."""
    cluster.query("DELETE FROM drives WHERE uuid = %s RETURNING uuid", drive)


def test_writes_through_one_daemon_drop_the_others_caches(cluster: Cluster) -> None:
    a, b = cluster.api_a, cluster.api_b
    for node in (cluster.a, cluster.b):
        _until(lambda node=node: _listening(cluster, node.pid), "a daemon does not listen", 10)
    made = [a.properties("/drives/create", b"name d\nsize 64k\n")["drive"] for _ in range(3)]
    _until(lambda: _listed(b) == made, "B does not list what A made")

    # B answers from its cache again on PostgreSQL: a delete it was not told of stays unseen.
    _delete_unheard(cluster, made[0])
    assert _listed(b) == made
    # A write through A (a notification with its commit) drops B's cache.
    made.append(a.properties("/drives/create", b"name d\nsize 64k\n")["drive"])
    _until(lambda: _listed(b) == made[1:], "B still lists from its old cache")

    # A key rotated (by the admin tool, on the database) is refused by both daemons.
    rotated = dict(
        line.split(" ", 1)
        for line in cluster.admin("user", "rotate-key", cluster.account.user).splitlines()
    )
    new = Api(Account(cluster.account.user, rotated["secret"]), b.url)
    _until(lambda: b.call("/drives/list").status == 401, "B still takes the old key")
    assert a.call("/drives/list").status == 401
    assert _listed(new) == made[1:]
    a, b = Api(new.account, a.url), new

    # B's listening connection is cut: until it listens again B caches nothing, so a write it
    # never hears of is seen.
    old_listener = cluster.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        f"openhosting-listen-{cluster.b.pid}",
    )
    assert old_listener == [(True,)]
    _delete_unheard(cluster, made[1])
    _until(lambda: _listed(b) == made[2:], "B answers from a cache it cannot trust")
    # Listening again, B caches again (and hears A's writes).
    _until(lambda: _listening(cluster, cluster.b.pid), "B does not listen again", 10)
    assert _listed(b) == made[2:]
    _delete_unheard(cluster, made[2])
    assert _listed(b) == made[2:]
    made.append(a.properties("/drives/create", b"name d\nsize 64k\n")["drive"])
    _until(lambda: _listed(b) == made[3:], "B does not hear A after listening again")
