"""Operations under way across two API daemons on one PostgreSQL: a write streaming through
one refuses a shrink through the other with the answer one daemon gives, and a daemon
SIGKILLed mid-write frees the drive for the other once its lease has run out."""

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.daemon_process import Answer
from tests.cluster.nodes import Cluster

LEASE = 2  # seconds (host.operation_lease_seconds)
CHUNK = 64 << 10


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url, {"OH_HOST_OPERATION_LEASE_SECONDS": str(LEASE)})
    try:
        yield made
    finally:
        made.stop()


def _wait_rows(cluster: Cluster, drive: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(cluster.query("SELECT kind FROM operations WHERE object = %s", drive)) != count:
        assert time.monotonic() < deadline, f"not {count} operations on {drive}"
        time.sleep(0.05)


def test_a_write_through_one_node_refuses_a_shrink_through_the_other_until_it_dies(
    cluster: Cluster,
) -> None:
    drive = cluster.api_a.properties("/drives/create", b"name d\nsize 1M\n")["drive"]
    release = threading.Event()
    answers: list[Answer | BaseException] = []

    def slow_body() -> Iterator[bytes]:
        yield b"\1" * CHUNK
        release.wait(30)  # the rest comes only once the test has looked
        yield b"\2" * CHUNK

    def write() -> None:
        try:
            answers.append(cluster.api_a.call(
                f"/drives/{drive}/write/0", slow_body(), {"Content-Length": str(2 * CHUNK)}
            ))  # fmt: skip
        except OSError as error:  # the daemon killed under it
            answers.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        _wait_rows(cluster, drive, 1, timeout=10)  # A's write is under way
        status, headers, body = cluster.api_b.call(f"/drives/{drive}/set", b"size 512k\n")
        assert status == 409, body
        assert headers["X-Elastic-Error"] == "busy"
        assert body.decode().strip() == (
            f"Drive {drive} is being read or written and cannot be shrunk now"
        )
        assert cluster.api_b.properties(f"/drives/{drive}/info")["size"] == str(1 << 20)

        # A dies mid-write: nothing renews its operation, and B may shrink within the lease.
        cluster.a.end(signal.SIGKILL)
        killed = time.monotonic()
        while (answer := cluster.api_b.call(f"/drives/{drive}/set", b"size 512k\n")).status != 200:
            assert answer.status == 409, answer
            assert time.monotonic() - killed < LEASE + 3, "the dead node still holds the drive"
            time.sleep(0.1)
        assert cluster.api_b.properties(f"/drives/{drive}/info")["size"] == str(512 << 10)
    finally:
        release.set()
        writer.join(timeout=30)
