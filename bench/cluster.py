"""The cluster's costs, each beside the single host's in one run:

- API requests per second of an authenticated `GET /drives/list` with the daemon's store on
  PostgreSQL (a server of the benchmark's own, testbed/postgres.py) against the same on
  SQLite (goal ≥ 0.6);
- the latency of `drives/create` (placement, then the drive made), each new drive avoiding
  the one before, on a cluster of 3 agent hosts in network namespaces (`make cluster`'s,
  testbed/cluster.py, agents over the fake driver) against one host alone, both on
  PostgreSQL (goal ≤ 1.2×).

Runs alternate between the two sides and each side's median is kept: the shared machine's
load comes and goes. Needs root (network namespaces). About two minutes.
"""

import statistics
import time
from collections.abc import Callable

from bench.api_rps import _measured
from bench.harness import report, running_daemon, work_directory
from testbed.cluster import LocalCluster, Topology
from testbed.daemon_process import Api
from testbed.postgres import PostgresServer

ROUNDS = 3  # of wrk runs per side, alternated
OBJECTS = 3  # drives listed
CREATE_ROUNDS = 8  # of creates per side, alternated
CREATES = 5  # per round
DRIVE = b"size 1M\nencryption:cipher none\n"  # no LUKS header: placement and the row weigh


def run() -> float:
    rps_ratio = _list_rates()
    _create_latencies()
    return rps_ratio


def _list_rates() -> float:
    """req/s of GET /drives/list on PostgreSQL and on SQLite; their ratio."""
    postgres = PostgresServer()
    try:
        url = postgres.url(postgres.new_database())
        with (
            work_directory("cluster-sqlite") as sqlite_dir,
            work_directory("cluster-pg") as pg_dir,
            running_daemon(sqlite_dir) as on_sqlite,
            running_daemon(pg_dir, env={"OH_STORE_URL": url}) as on_postgres,
        ):
            runs: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgresql": []}
            daemons = {"sqlite": on_sqlite, "postgresql": on_postgres}
            for daemon in daemons.values():
                api = Api(daemon, daemon.url)
                for _ in range(OBJECTS):
                    api.properties("/drives/create", DRIVE)
            for _ in range(ROUNDS):
                for name, daemon in daemons.items():
                    headers = {"Authorization": daemon.auth_header}
                    runs[name].append(
                        _measured(daemon.process.pid, f"{daemon.url}/drives/list", headers)
                    )
    finally:
        postgres.stop()
    rate = {name: statistics.median(r for r, _ in measured) for name, measured in runs.items()}
    cpu = {name: statistics.median(c for _, c in measured) for name, measured in runs.items()}
    ratio = report("cluster GET /drives/list on PostgreSQL", rate["postgresql"],
                   "the same on SQLite", rate["sqlite"], "req/s", "≥ 0.6")  # fmt: skip
    report("cluster GET /drives/list CPU per request on PostgreSQL", cpu["postgresql"],
           "the same on SQLite", cpu["sqlite"], "µs", "≥ 0.6",
           ratio=cpu["sqlite"] / cpu["postgresql"])  # fmt: skip
    return ratio


def _create_latencies() -> float:
    """Median ms of drives/create with 3 agent hosts and with 1 host; their ratio."""
    postgres = PostgresServer()
    try:
        url = postgres.url(postgres.new_database())
        with (
            work_directory("cluster-one") as one_dir,
            work_directory("cluster-three") as three_dir,
            running_daemon(one_dir, env={"OH_STORE_URL": url}) as alone,
        ):
            cluster = LocalCluster(
                three_dir / "cluster", Topology("ohb-", "10.243.250"), driver="fake"
            )
            try:
                sides = {
                    "one host": Api(alone, alone.url),
                    "three hosts": Api(cluster.account, cluster.daemon.url),
                }
                times: dict[str, list[float]] = {name: [] for name in sides}
                hosts: set[str] = set()
                for _ in range(CREATE_ROUNDS):
                    for name, api in sides.items():
                        times[name] += _creates(api, hosts.add if name == "three hosts" else None)
            finally:
                cluster.stop()
    finally:
        postgres.stop()
    assert len(hosts) == 4, hosts  # the API node's own and the three agents' all took drives
    one = statistics.median(times["one host"]) * 1000
    three = statistics.median(times["three hosts"]) * 1000
    return report("cluster drives/create with 3 agent hosts (p50)", three, "one host", one,
                  "ms", "≤ 1.2")  # fmt: skip


def _creates(api: Api, seen: Callable[[str], None] | None) -> list[float]:
    """Seconds of each of CREATES drive creates through `api`, each avoiding the one before."""
    durations, previous = [], ""
    for _ in range(CREATES):
        body = DRIVE + (f"avoid {previous}\n".encode() if previous else b"")
        begun = time.perf_counter()
        info = api.properties("/drives/create", body)
        durations.append(time.perf_counter() - begun)
        previous = info["drive"]
        if seen is not None:
            seen(info["host"])
    return durations
