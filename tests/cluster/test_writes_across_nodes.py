"""Read-check-writes through two API daemons at once on one PostgreSQL: a user's limits are
never passed (the check and the insert are one transaction holding the user's row), and of two
claims on one drive exactly one wins, the other a clear 4xx (the drive's row held): `SELECT …
FOR UPDATE`, store/row_locks.py. One pair of daemons serves both checks (their start is most
of the time)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.cluster import at_once
from testbed.daemon_process import Answer
from tests.cluster.nodes import Cluster

ATTEMPTS = 16  # creates per kind, half through each daemon
ROUNDS = 4  # of each claims race
# Each race's drives hold DATA bytes, copied at RATE bytes/s: a job holds its claims for
# about a second, so the two requests of a race meet it running (a job over an empty drive
# ends in a few ms, and on a loaded machine the second request could come after its end,
# both then rightly accepted).
DATA = 64 * 1024
RATE = 64 * 1024


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url, {"OH_STORAGE_IMAGING_MAX_RATE": str(RATE)})
    try:
        yield made
    finally:
        made.stop()


def test_limits_and_claims_hold_through_two_daemons_at_once(cluster: Cluster) -> None:
    _limits_hold(cluster)
    _one_claim_wins(cluster)


def _created(cluster: Cluster, path: str, body: bytes) -> list[int]:
    """The statuses of ATTEMPTS creates `path` with `body`, sent at once to both daemons."""
    apis = [cluster.api_a, cluster.api_b] * (ATTEMPTS // 2)
    answers = at_once([lambda api=api: api.call(path, body) for api in apis])
    return [answer.status for answer in answers]


def _limits_hold(cluster: Cluster) -> None:
    """Creates of servers, IPs and drives sent at once to both stop at the user's limits."""
    user = cluster.account.user
    cluster.admin("user", "set", user, "--max-servers", "3", "--max-ips", "2",
                  "--max-drive-bytes", "4M")  # fmt: skip
    statuses = {
        "servers": _created(cluster, "/servers/create/stopped", b"name s\ncpu 500\nmem 64\n"),
        "ips": _created(cluster, "/resources/ip/create", b""),
        "drives": _created(cluster, "/drives/create", b"name d\nsize 1M\n"),
    }
    for kind, limit in (("servers", 3), ("ips", 2), ("drives", 4)):
        assert sorted(set(statuses[kind])) == [200, 402], (kind, statuses[kind])
        assert statuses[kind].count(200) == limit, (kind, statuses[kind])
    shown = cluster.api_b.properties("/account/info")
    assert shown["usage:servers"] == "3" and shown["usage:ips"] == "2"
    assert shown["usage:drive:bytes"] == str(4 << 20)
    cluster.admin("user", "set", user, "--max-drive-bytes", "none")  # room for the claims


def _new_drive(cluster: Cluster) -> str:
    """A drive of DATA bytes of data."""
    drive = cluster.api_a.properties("/drives/create", f"name d\nsize {DATA}\n".encode())["drive"]
    assert cluster.api_a.call(f"/drives/{drive}/write", os.urandom(DATA)).status == 204
    return str(drive)


def _race(cluster: Cluster, through_a: str, through_b: str) -> tuple[Answer, Answer]:
    """POST `through_a` to daemon A and `through_b` to daemon B at once."""
    first, second = at_once([
        lambda: cluster.api_a.call(through_a, b""),
        lambda: cluster.api_b.call(through_b, b""),
    ])  # fmt: skip
    return first, second


def _one_claim_wins(cluster: Cluster) -> None:
    """One drive claimed at once through both: one 204, the other 409 (or 404 if gone)."""
    for _ in range(ROUNDS):
        # Through A, D is a job's source; through B, D is another job's destination: the
        # two claims exclude each other (a drive being imaged is not a source).
        d, x, y = (_new_drive(cluster) for _ in range(3))
        source, destination = _race(cluster, f"/drives/{x}/image/{d}", f"/drives/{d}/image/{y}")
        assert sorted((source.status, destination.status)) == [204, 409], (source, destination)
        # Through A, a job claims D as its source; through B, D is destroyed: either the job
        # claimed D first (the destroy is busy) or D went first (no job, no such drive).
        d, x = _new_drive(cluster), _new_drive(cluster)
        imaged, destroyed = _race(cluster, f"/drives/{x}/image/{d}", f"/drives/{d}/destroy")
        assert (imaged.status, destroyed.status) in ((204, 409), (404, 204)), (imaged, destroyed)
