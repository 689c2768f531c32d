"""A second API node answers as the first (nothing that matters is only in one process), and
an API node killed in the middle of a batch of writes loses none it acknowledged."""

import signal
import threading

from tests.cluster.nodes import Cluster

# What each listing and info is read as through both daemons.
READS = [
    "/drives/list", "/drives/info", "/servers/list", "/servers/info", "/resources/list",
    "/resources/info", "/account/info",
]  # fmt: skip


def test_a_second_daemon_answers_alike_and_one_killed_mid_batch_loses_nothing(
    cluster: Cluster,
) -> None:
    _answers_alike(cluster)
    _killed_mid_batch(cluster)


def _answers_alike(cluster: Cluster) -> None:
    """What daemon A made, B lists and shows byte for byte alike; a change through B, A
    shows."""
    a, b = cluster.api_a, cluster.api_b
    drive = a.properties("/drives/create", b"name data\nsize 1M\ntags x y\nuser:note hi\n")
    written = a.call(f"/drives/{drive['drive']}/write/0", b"\x01" * 4096)
    assert written.status == 204, written
    server = a.properties(
        "/servers/create/stopped",
        f"name web\ncpu 500\nmem 64\nide:0:0 {drive['drive']}\nuser:role web\n".encode(),
    )
    a.properties("/resources/ip/create", b"name front\n")
    a.properties("/resources/vlan/create", b"name back\n")
    reads = [*READS, f"/drives/{drive['drive']}/info", f"/servers/{server['server']}/info"]
    for path in reads:
        through_a, through_b = a.call(path), b.call(path)
        assert (through_a.status, through_a.body) == (through_b.status, through_b.body), path
    # And a change through B is what A then shows.
    b.properties(f"/drives/{drive['drive']}/set", b"name renamed\n")
    assert a.properties(f"/drives/{drive['drive']}/info")["name"] == "renamed"


def _killed_mid_batch(cluster: Cluster) -> None:
    """Creates sent one after another to A, SIGKILLed after a few: every one A answered 200
    is listed through B."""
    a, b = cluster.api_a, cluster.api_b
    acknowledged: list[tuple[str, str]] = []  # (listing, object) of every 200
    refused: list[int] = []

    def batch() -> None:
        for index in range(200):  # bounded: the kill ends it long before
            path, listing, key = (
                ("/drives/create", "/drives/list", "drive") if index % 2 == 0
                else ("/servers/create/stopped", "/servers/list", "server")
            )  # fmt: skip
            body = b"name n\nsize 64k\n" if key == "drive" else b"name n\ncpu 500\nmem 64\n"
            try:
                answer = a.call(path, body)
            except OSError:
                return  # the daemon is gone: this write was never acknowledged
            if answer.status != 200:
                refused.append(answer.status)
                return
            made = dict(line.split(" ", 1) for line in answer.body.decode().splitlines())
            acknowledged.append((listing, made[key]))

    writer = threading.Thread(target=batch)
    writer.start()
    try:
        while len(acknowledged) < 6 and writer.is_alive():
            threading.Event().wait(0.02)
        cluster.a.end(signal.SIGKILL)
    finally:
        writer.join(timeout=60)
    assert not writer.is_alive() and not refused, refused
    assert len(acknowledged) >= 6
    listings = {
        path: b.call(path).body.decode().split() for path in ("/drives/list", "/servers/list")
    }
    missing = [(path, uuid) for path, uuid in acknowledged if uuid not in listings[path]]
    assert not missing, missing
