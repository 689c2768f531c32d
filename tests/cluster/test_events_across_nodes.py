"""One event feed over two API daemons on one PostgreSQL: an imaging job run by one daemon
is told, progress and end, in the `/events` of the other, and each event once on both."""

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from testbed.daemon_process import Api
from tests.cluster.nodes import Cluster

RATE = 512 << 10  # source bytes per second: a 1 MiB job takes about 2 s, progress each 0.5 s


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url, {"OH_STORAGE_IMAGING_MAX_RATE": str(RATE)})
    try:
        yield made
    finally:
        made.stop()


class EventStream:
    """The events of one open `/events` stream, gathered by a thread as they come."""

    def __init__(self, api: Api) -> None:
        address = urlsplit(api.url)
        self._connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=30
        )
        self._connection.request("GET", "/events", headers=api.account.headers)
        self._response = self._connection.getresponse()
        assert self._response.status == 200
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self._response.readline():
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))
        except (OSError, ValueError):
            pass  # closed by the test

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(match(event) for event in list(self.events)):
            assert time.monotonic() < deadline, self.events
            time.sleep(0.05)

    def close(self) -> None:
        # The reader's socket shut first: its readline ends (closing alone would pull the
        # file from under it).
        if self._connection.sock is not None:
            self._connection.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._connection.close()


def test_an_imaging_job_run_by_one_node_is_told_in_the_other_nodes_events(
    cluster: Cluster,
) -> None:
    def create() -> str:
        return cluster.api_a.properties("/drives/create", b"name d\nsize 1M\n")["drive"]

    src, dst = create(), create()
    assert cluster.api_a.call(f"/drives/{src}/write/0", os.urandom(1 << 20)).status == 204
    streams = {cluster.a.pid: EventStream(cluster.api_a), cluster.b.pid: EventStream(cluster.api_b)}
    try:
        time.sleep(0.5)  # both streams subscribed before the job is sent
        assert cluster.api_b.call(f"/drives/{dst}/image/{src}", b"").status == 204
        deadline = time.monotonic() + 10
        while not (owner := cluster.query("SELECT owner FROM jobs WHERE dst = %s", dst)[0][0]):
            assert time.monotonic() < deadline, "no daemon claimed the job"
            time.sleep(0.05)
        runner = int(owner.split("/")[1])
        (observer,) = (streams[pid] for pid in streams if pid != runner)

        def imaging(state: Callable[[str], bool]) -> Callable[[dict[str, Any]], bool]:
            return lambda event: event["object"] == dst and state(str(event.get("imaging")))

        observer.wait(imaging(lambda state: state.endswith("%") and state != "0%"), timeout=10)
        observer.wait(imaging(lambda state: state == "done"), timeout=10)
        time.sleep(0.5)  # anything told twice would have come by now
        for stream in streams.values():
            told = [(e["change"], e.get("imaging"), e["at"]) for e in stream.events
                    if e["object"] == dst]  # fmt: skip
            assert len(told) == len(set(told)), told  # each event once
            assert [imaging for _, imaging, _ in told].count("done") == 1, told
    finally:
        for stream in streams.values():
            stream.close()
