"""How cost grows with the account: one user holding 100, 1,000 and 10,000 drives and 10, 100
and 1,000 stopped servers (each server with one of the drives attached), and at each size the
latency (p50, p99) of the listings and infos and the daemon's RSS, printed as one table.

Everything is created through the API, as a customer would, by 8 clients at once (several
hundred creates a second here: the 11,000 of the largest size in well under a minute). The
figure is how each command's cost grows from the smallest size to the largest: per item
returned for the commands that return every object (goal: no more than at the smallest,
O(n) in what is returned), per request for those that return one (goal: flat).

`OH_BENCH_SCALE_DRIVES` and `OH_BENCH_SCALE_SERVERS` (comma-separated, increasing, as many of
each) and `OH_BENCH_SCALE_SECONDS` (time spent on each command at each size) shrink a run.
"""

import http.client
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from bench.harness import Daemon, report, running_daemon, work_directory
from bench.reliability.load import percentile, rss_bytes
from testbed.daemon_process import Api

DRIVE_COUNTS = (100, 1000, 10000)
SERVER_COUNTS = (10, 100, 1000)
SECONDS_PER_COMMAND = 2.0
# At least this many requests of each command at each size, however slow it is, and at most
# this many: a p99 needs a hundred; a thousand more say nothing new.
MIN_REQUESTS, MAX_REQUESTS = 5, 1000
CREATE_CLIENTS = 8
ALL_ITEMS = ("/drives/list", "/drives/info", "/servers/info")


def _counts(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    text = os.environ.get(name)
    return tuple(int(part) for part in text.split(",")) if text else default


@dataclass(frozen=True)
class Figure:
    """One command at one size."""

    command: str
    items: int  # objects in each answer
    p50: float  # seconds
    p99: float
    requests: int

    @property
    def per_item(self) -> float:
        return self.p50 / max(1, self.items)


@contextmanager
def _connection(daemon: Daemon) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection, as a client polling the API holds it."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    try:
        yield connection
    finally:
        connection.close()


def _measure(daemon: Daemon, command: str, paths: list[str], items: int, seconds: float) -> Figure:
    """Latencies of GETs of `paths` (in turn) on one connection for about `seconds`."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with _connection(daemon) as connection:
        while len(latencies) < MAX_REQUESTS and (
            len(latencies) < MIN_REQUESTS or time.monotonic() < deadline
        ):
            path = paths[len(latencies) % len(paths)]
            sent = time.perf_counter()
            connection.request("GET", path, headers={"Authorization": daemon.auth_header})
            response = connection.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    latencies.sort()
    return Figure(
        command, items, percentile(latencies, 0.5), percentile(latencies, 0.99), len(latencies)
    )


def _create(
    api: Api, drives: range, servers: range, drive_ids: list[str]
) -> tuple[list[str], list[str]]:
    """Drives `drives` (1 MiB, sparse, plain) and stopped servers `servers`, the server of
    index i with drive i attached; by CREATE_CLIENTS clients at once."""

    def drive(index: int) -> str:
        body = f"name d{index}\nsize 1M\nencryption:cipher none".encode()
        return api.properties("/drives/create", body)["drive"]

    with ThreadPoolExecutor(CREATE_CLIENTS) as pool:
        new_drives = list(pool.map(drive, drives))
        every_drive = drive_ids + new_drives

        def server(index: int) -> str:
            body = (
                f"name s{index}\ncpu 500\nmem 64\nide:0:0 {every_drive[index]}\nboot ide:0:0"
            ).encode()
            return api.properties("/servers/create/stopped", body)["server"]

        new_servers = list(pool.map(server, servers))
    return new_drives, new_servers


def _print_table(rows: list[tuple[int, int, int, list[Figure]]]) -> None:
    print(f"{'drives':>7} {'servers':>7} {'RSS MiB':>7}  {'command':<16} {'items':>6}"
          f" {'p50 ms':>8} {'p99 ms':>8} {'µs/item':>8}")  # fmt: skip
    for drives, servers, rss, figures in rows:
        for figure in figures:
            print(
                f"{drives:>7} {servers:>7} {rss >> 20:>7}  {figure.command:<16}"
                f" {figure.items:>6} {figure.p50 * 1000:>8.2f} {figure.p99 * 1000:>8.2f}"
                f" {figure.per_item * 1e6:>8.1f}",
                flush=True,
            )


def run() -> float:
    drive_counts = _counts("OH_BENCH_SCALE_DRIVES", DRIVE_COUNTS)
    server_counts = _counts("OH_BENCH_SCALE_SERVERS", SERVER_COUNTS)
    seconds = float(os.environ.get("OH_BENCH_SCALE_SECONDS", SECONDS_PER_COMMAND))
    assert len(drive_counts) == len(server_counts), "as many drive counts as server counts"
    assert all(s <= d for d, s in zip(drive_counts, server_counts, strict=True)), (
        "each server has a drive of its own"
    )
    rng = random.Random(20)
    rows: list[tuple[int, int, int, list[Figure]]] = []
    with work_directory("scale") as work_dir, running_daemon(work_dir) as daemon:
        api = Api(daemon, daemon.url, timeout=120)
        drive_ids: list[str] = []
        server_ids: list[str] = []
        for drives, servers in zip(drive_counts, server_counts, strict=True):
            began = time.monotonic()
            new_drives, new_servers = _create(
                api, range(len(drive_ids), drives), range(len(server_ids), servers), drive_ids
            )
            drive_ids += new_drives
            server_ids += new_servers
            print(
                f"scale: {drives} drives, {servers} servers"
                f" ({len(new_drives) + len(new_servers)} created in"
                f" {time.monotonic() - began:.1f} s)",
                flush=True,
            )
            some_drives = [f"/drives/{d}/info" for d in rng.sample(drive_ids, min(100, drives))]
            some_servers = [f"/servers/{s}/info" for s in rng.sample(server_ids, min(100, servers))]
            figures = [
                _measure(daemon, "drives/list", ["/drives/list"], drives, seconds),
                _measure(daemon, "drives/info", ["/drives/info"], drives, seconds),
                _measure(daemon, "drives/D/info", some_drives, 1, seconds),
                _measure(daemon, "servers/info", ["/servers/info"], servers, seconds),
                _measure(daemon, "servers/S/info", some_servers, 1, seconds),
            ]
            rows.append((drives, servers, rss_bytes(daemon.process.pid), figures))
    _print_table(rows)
    return _report_growth(rows)


def _report_growth(rows: list[tuple[int, int, int, list[Figure]]]) -> float:
    """Each command's cost at the largest size against the smallest: per item for the
    commands returning every object, per request for the others. The worst is returned."""
    (small_drives, small_servers, _, first), (drives, servers, _, last) = rows[0], rows[-1]
    ratios = []
    for before, after in zip(first, last, strict=True):
        all_items = before.items > 1 or after.items > 1
        value, anchor = (after.per_item, before.per_item) if all_items else (after.p50, before.p50)
        unit, goal = ("µs/item", "≤ 1, O(n)") if all_items else ("µs", "≤ 1.5, flat")
        name = f"scale {after.command} at {drives} drives / {servers} servers"
        anchor_name = f"at {small_drives} drives / {small_servers} servers"
        ratios.append(report(name, value * 1e6, anchor_name, anchor * 1e6, unit, goal))
    return max(ratios)
