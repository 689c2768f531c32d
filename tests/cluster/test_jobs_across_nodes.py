"""Imaging jobs with two API daemons on one PostgreSQL: each job is claimed by one daemon
(`FOR UPDATE SKIP LOCKED`) and runs once; the jobs of a daemon SIGKILLed mid-job are taken
over by the other once their lease runs out, and finished."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.nodes import Cluster

LEASE = 2  # seconds (storage.imaging_lease_seconds)
RATE = 512 << 10  # source bytes per second per job: a 1 MiB job takes about 2 s
JOBS = 6


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url, {
        "OH_STORAGE_IMAGING_LEASE_SECONDS": str(LEASE),
        "OH_STORAGE_IMAGING_MAX_RATE": str(RATE),
    })  # fmt: skip
    try:
        yield made
    finally:
        made.stop()


def _drive(cluster: Cluster, size: str) -> str:
    return cluster.api_a.properties("/drives/create", f"name d\nsize {size}\n".encode())["drive"]


def _wait_jobs_ended(cluster: Cluster, count: int, timeout: float) -> list[tuple[int, str, int]]:
    """(id, state, attempts) of every job once `count` have ended."""
    deadline = time.monotonic() + timeout
    while True:
        rows = cluster.query("SELECT id, state, attempts FROM jobs ORDER BY id")
        if sum(state in ("done", "failed") for _, state, _ in rows) >= count:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)


def test_jobs_run_once_and_a_killed_daemons_job_is_finished_by_the_other(
    cluster: Cluster,
) -> None:
    # N small jobs, sent half to each daemon: each is started once, and all end done.
    src = _drive(cluster, "64k")
    assert cluster.api_a.call(f"/drives/{src}/write/0", os.urandom(64 << 10)).status == 204
    for index in range(JOBS):
        api = (cluster.api_a, cluster.api_b)[index % 2]
        assert api.call(f"/drives/{_drive(cluster, '64k')}/image/{src}", b"").status == 204
    rows = _wait_jobs_ended(cluster, JOBS, timeout=20)
    assert [(state, attempts) for _, state, attempts in rows] == [("done", 1)] * JOBS, rows

    # A 1 MiB job: the daemon that claimed it is SIGKILLed mid-way; the other takes it over
    # once its lease has run out and copies it whole.
    big = _drive(cluster, "1M")
    data = os.urandom(1 << 20)
    assert cluster.api_a.call(f"/drives/{big}/write/0", data).status == 204
    dst = _drive(cluster, "1M")
    assert cluster.api_b.call(f"/drives/{dst}/image/{big}", b"").status == 204
    deadline = time.monotonic() + 10
    while not (owner := cluster.query("SELECT owner FROM jobs WHERE dst = %s", dst)[0][0]):
        assert time.monotonic() < deadline, "no daemon claimed the job"
        time.sleep(0.05)
    pid = int(owner.split("/")[1])
    victim, survivor = (
        (cluster.a, cluster.api_b) if pid == cluster.a.pid else (cluster.b, cluster.api_a)
    )
    assert pid == victim.pid
    time.sleep(0.5)  # mid-job: it takes about 2 s
    victim.end(signal.SIGKILL)
    deadline = time.monotonic() + LEASE + 10
    while cluster.query("SELECT attempts FROM jobs WHERE dst = %s", dst)[0][0] < 2:
        assert time.monotonic() < deadline, "nobody took the job over"
        time.sleep(0.05)
    # The killed daemon started again while the other runs its job: it leaves it alone.
    victim.start()
    _wait_jobs_ended(cluster, JOBS + 1, timeout=20)
    [(state, attempts, new_owner)] = cluster.query(
        "SELECT state, attempts, owner FROM jobs WHERE dst = %s", dst
    )
    assert (state, attempts) == ("done", 2)
    assert int(new_owner.split("/")[1]) != pid
    info = survivor.properties(f"/drives/{dst}/info")
    assert "imaging" not in info and "imaging:error" not in info, info
    hashes = [survivor.properties(f"/drives/{d}/hash")["hash"] for d in (big, dst)]
    assert hashes[0] == hashes[1]
