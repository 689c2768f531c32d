"""A drive claimed through two API daemons at once: exactly one claim wins, the other is a
clear 4xx (never a 500, never both). The claims check and insert hold the drive's row
(`SELECT … FOR UPDATE`) on PostgreSQL."""

from testbed.daemon_process import Answer
from tests.cluster.nodes import Cluster, at_once

ROUNDS = 4


def _new_drive(cluster: Cluster) -> str:
    return cluster.api_a.properties("/drives/create", b"name d\nsize 64k\n")["drive"]


def _race(cluster: Cluster, through_a: str, through_b: str) -> tuple[Answer, Answer]:
    """POST `through_a` to daemon A and `through_b` to daemon B at once."""
    first, second = at_once([
        lambda: cluster.api_a.call(through_a, b""),
        lambda: cluster.api_b.call(through_b, b""),
    ])  # fmt: skip
    return first, second


def test_one_drive_claimed_at_once_through_two_daemons_has_one_winner(cluster: Cluster) -> None:
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
