"""The database's work per unit of the cluster's activity, counted by PostgreSQL itself: the
measured inputs of the capacity model in docs/cluster.md.

A PostgreSQL 15 of its own (testbed/postgres.py) with `pg_stat_statements` preloaded: after
each activity the benchmark reads, per statement and per database role, how often it ran,
the rows it returned or changed and the WAL it wrote. The daemon connects as `postgres`, the
work this benchmark drives itself as `oh_bench`, so the two never blur.

The platform, small: a real `openhostingd` on that database with two users, one holding 30
servers and 300 drives, one 3 and 30. Its servers run on the fake hypervisor (VMs held in the
daemon's memory): what a running VM costs the database (its row, its claims, the fold of its
I/O counters, its share of metering) is the same whatever runs it; the hypervisor only hands
over the counter values, and the fold is measured both with them still (an idle or paused
guest, as the fake's are) and moving (every drive read and written since the last fold). The
stand-in is checked once against the real thing: the daemon restarted on QEMU (TCG here) with
one tiny guest, and its own fold of that guest counted (one QEMU at a time).

What is measured, each as the statements (reads, writes), rows and WAL of one unit:
- a host heartbeat: the daemon's own (`host.heartbeat_seconds` 1 for the window) and two
  simulated hosts', beaten from here through the same `Hosts.heartbeat`;
- a running VM's guest I/O fold (every 30 s in the daemon), through `fold_guest_io`, from the
  servers' real claims;
- metering (every `billing.interval`) through `Billing.meter`, per account;
- `servers/info`, `drives/info`, `servers/S/info`, `drives/D/info` through the API at two
  sizes, with the daemon's CPU time per request (what one API node serves);
- imaging jobs through the API, a short and a long one: a fixed part and a part per second
  (the progress reports, every 0.5 s).
Then the model: those costs times the counts of a 1,000-host, 100,000-server platform.

Bounded: one to two minutes here (half a minute of it waiting for the daemon's fold of the
real guest); PostgreSQL, the daemon and QEMU stopped by their PIDs, their directories
removed.
"""

import http.client
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import psycopg
from sqlalchemy import Engine, select

from bench.drive_data import api_post, create_drive
from bench.harness import Daemon, running_daemon, work_directory
from bench.vm_scale import cpu_seconds
from openhosting.config import BillingSettings, HostSettings, load_config
from openhosting.hypervisor.driver import BlockStats
from openhosting.services.accounts.billing import Billing
from openhosting.services.cluster.hosts import Hosts
from openhosting.services.drives.guest_io import fold_guest_io
from openhosting.services.servers.server_lifecycle import GUEST_IO_FOLD_SECONDS
from openhosting.store import billing as billing_store
from openhosting.store.database import POOL_SIZE, create_store_engine
from openhosting.store.tables import claims, jobs, servers
from testbed.build_guest import build_tiny_guest
from testbed.daemon_process import DaemonProcess, create_user
from testbed.leftovers import kill_leftover_vms
from testbed.postgres import PostgresServer

PG_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_utility": "on",  # BEGIN and COMMIT count the transactions
    "pg_stat_statements.max": "10000",
    # WAL as a production server writes it (testbed/postgres.py turns them off for speed):
    # full pages after each checkpoint count in the WAL volume.
    "full_page_writes": "on",
}
DAEMON_ROLE = "postgres"
BENCH_ROLE = "oh_bench"

BIG_SERVERS, BIG_DRIVES = 30, 300
SMALL_SERVERS, SMALL_DRIVES = 3, 30
DRIVE_BYTES = 1 << 20
POLLS = 40
REPEATS = 3
ATTEMPTS = 3
HEARTBEAT_WINDOW = 10.0
SIMULATED_HOSTS = ("sim-1", "sim-2")
IMAGE_RATE = 16 << 20  # bytes/s a job may copy: jobs of about 1 s and 4 s
JOB_TIMEOUT = 60.0
# The daemon folds 30 s after its start, then every 30 s.
REAL_FOLD_TIMEOUT = 70.0

# The daemon's intervals by default, in seconds.
HEARTBEAT_SECONDS = float(HostSettings().heartbeat_seconds)
FOLD_SECONDS = GUEST_IO_FOLD_SECONDS
METERING_SECONDS = float(BillingSettings().interval)


@dataclass(frozen=True)
class Tally:
    """What the database did for some activity, as pg_stat_statements counts it."""

    transactions: float = 0  # BEGINs
    reads: float = 0  # SELECT statements
    writes: float = 0  # INSERT, UPDATE, DELETE
    rows_read: float = 0
    rows_written: float = 0
    wal_bytes: float = 0

    @property
    def statements(self) -> float:
        return self.reads + self.writes

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: "Tally") -> "Tally":
        return self + other.times(-1)

    def times(self, factor: float) -> "Tally":
        return Tally(*(getattr(self, f.name) * factor for f in fields(self)))


def classify(query: str, calls: int, rows: int, wal_bytes: int) -> Tally:
    """One statement's counts (`calls` runs, `rows` returned or changed) as a Tally."""
    verb = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
    if verb == "BEGIN":
        return Tally(transactions=calls, wal_bytes=wal_bytes)
    if verb in ("INSERT", "UPDATE", "DELETE"):
        return Tally(writes=calls, rows_written=rows, wal_bytes=wal_bytes)
    if verb in ("SELECT", "WITH"):
        return Tally(reads=calls, rows_read=rows, wal_bytes=wal_bytes)
    # COMMIT (its WAL is the commit record), ROLLBACK, SET, SHOW: no work of their own. The
    # pool's liveness check at each checkout is an empty statement, which is not counted.
    return Tally(wal_bytes=wal_bytes)


Snapshot = dict[tuple[str, int], tuple[str, int, int, int]]


class Counters:
    """pg_stat_statements of one database, read through the `postgres` database (whose own
    statements are left out)."""

    def __init__(self, server: PostgresServer, database: str) -> None:
        self._connection = psycopg.connect(server.dsn("postgres"), autocommit=True)
        self._database = database
        # Statements of the daemon's own periodic work (its guest I/O fold, every 30 s): a
        # measurement that sees one is taken again, for it is not the activity's.
        self.background: set[str] = set()

    def close(self) -> None:
        self._connection.close()

    def snapshot(self) -> Snapshot:
        rows = self._connection.execute(
            "SELECT r.rolname, s.queryid, s.query, s.calls, s.rows, s.wal_bytes"
            " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            " WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
            (self._database,),
        ).fetchall()
        return {(role, queryid): (query, calls, count, int(wal)) for role, queryid, query, calls,
                count, wal in rows}  # fmt: skip

    @staticmethod
    def difference(before: Snapshot, after: Snapshot, role: str) -> dict[str, Tally]:
        """Query text → what `role` did with it between the snapshots."""
        done: dict[str, Tally] = {}
        for (who, queryid), (query, calls, count, wal) in after.items():
            if who != role:
                continue
            _, calls0, count0, wal0 = before.get((who, queryid), (query, 0, 0, 0))
            if calls > calls0:
                done[query] = done.get(query, Tally()) + classify(
                    query, calls - calls0, count - count0, wal - wal0
                )
        return done

    def measure(self, role: str, action: Callable[[], object]) -> tuple[Tally, dict[str, Tally]]:
        """What `role` did on the database while `action` ran: the total and per query;
        `action` runs again (up to `ATTEMPTS` in all) while background work blurs it."""
        for _ in range(ATTEMPTS):
            before = self.snapshot()
            action()
            by_query = self.difference(before, self.snapshot(), role)
            if not self.background & by_query.keys():
                break
        else:
            raise RuntimeError(f"background work in each of {ATTEMPTS} measurements")
        return sum(by_query.values(), Tally()), by_query


# -- the platform, small --------------------------------------------------------------------


def as_user(daemon: Daemon, user: str, secret: str) -> Daemon:
    return replace(daemon, user=user, secret=secret)


def populate(daemon: Daemon, server_count: int, drive_count: int) -> list[str]:
    """`drive_count` drives and `server_count` running servers (each booting one of them) for
    the daemon's user; the servers' uuids."""
    with ThreadPoolExecutor(4) as pool:
        drives = list(pool.map(lambda _: create_drive(daemon, DRIVE_BYTES, "none"),
                               range(drive_count)))  # fmt: skip

        def create_server(index: int) -> str:
            body = f"name s{index}\ncpu 500\nmem 64\nide:0:0 {drives[index]}\nboot ide:0:0\n"
            answer = api_post(daemon, "/servers/create", body.encode())
            info = dict(line.split(" ", 1) for line in answer.splitlines() if " " in line)
            if info.get("status") != "active":
                raise RuntimeError(f"server {index} not active:\n{answer}")
            return info["server"]

        return list(pool.map(create_server, range(server_count)))


def poll(daemon: Daemon, path: str, count: int) -> float:
    """`count` GETs of `path` on one keep-alive connection; the daemon's CPU seconds per
    request."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    pid = daemon.process.pid
    try:
        before = cpu_seconds(pid)
        for _ in range(count):
            connection.request("GET", path, headers={"Authorization": daemon.auth_header})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        return (cpu_seconds(pid) - before) / count
    finally:
        connection.close()


@dataclass(frozen=True)
class Unit:
    """One activity's measured cost per unit, and the daemon's CPU time for it (polls)."""

    activity: str
    unit: str
    tally: Tally
    cpu_seconds: float = 0.0
    # The statements of one unit, by query text (for the measured units, not derived ones).
    queries: Mapping[str, Tally] = field(default_factory=dict)


def per_unit(by_query: Mapping[str, Tally], units: float) -> dict[str, Tally]:
    return {query: tally.times(1 / units) for query, tally in by_query.items()}


def fit(small: Tally, big: Tally, small_n: int, big_n: int) -> tuple[Tally, Tally]:
    """(fixed part, part per object) of a cost measured at `small_n` and `big_n` objects."""
    per_object = (big - small).times(1 / (big_n - small_n))
    return small - per_object.times(small_n), per_object


def measure_polls(counters: Counters, daemon: Daemon, small: Daemon) -> list[Unit]:
    units = []
    for path, big_n, small_n in (
        ("/servers/info", BIG_SERVERS, SMALL_SERVERS),
        ("/drives/info", BIG_DRIVES, SMALL_DRIVES),
    ):
        measured = {}
        for who, n in ((daemon, big_n), (small, small_n)):
            cpu = [0.0]

            def run(who: Daemon = who, path: str = path, cpu: list[float] = cpu) -> None:
                cpu[0] = poll(who, path, POLLS)

            tally, by_query = counters.measure(DAEMON_ROLE, run)
            measured[n] = (tally.times(1 / POLLS), cpu[0])
            units.append(Unit(f"{path} ({n} objects)", "request", *measured[n],
                              queries=per_unit(by_query, POLLS)))  # fmt: skip
        fixed, per_object = fit(measured[small_n][0], measured[big_n][0], small_n, big_n)
        cpu_per_object = (measured[big_n][1] - measured[small_n][1]) / (big_n - small_n)
        units.append(Unit(f"{path}: fixed part", "request", fixed,
                          measured[small_n][1] - cpu_per_object * small_n))  # fmt: skip
        units.append(Unit(f"{path}: per object", "object", per_object, cpu_per_object))
    return units


def measure_one_object(counters: Counters, daemon: Daemon, server: str, drive: str) -> list[Unit]:
    units = []
    for path in (f"/servers/{server}/info", f"/drives/{drive}/info"):
        cpu = [0.0]

        def run(path: str = path, cpu: list[float] = cpu) -> None:
            cpu[0] = poll(daemon, path, POLLS)

        tally, by_query = counters.measure(DAEMON_ROLE, run)
        name = path.replace(server, "S").replace(drive, "D")
        units.append(Unit(name, "request", tally.times(1 / POLLS), cpu[0],
                          per_unit(by_query, POLLS)))  # fmt: skip
    return units


def guest_readings(engine: Engine, step: int) -> dict[str, dict[str, BlockStats]]:
    """server → slot → QEMU's counters for every guest claim: each at its mark plus `step`
    reads and writes of 4 KiB (0: the guest did nothing since the last fold)."""
    readings: dict[str, dict[str, BlockStats]] = {}
    query = select(claims).where(claims.c.kind == "guest")
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            readings.setdefault(row["holder"], {})[row["device"]] = BlockStats(
                row["guest_read_bytes"] + 4096 * step, row["guest_read_requests"] + step,
                row["guest_write_bytes"] + 4096 * step, row["guest_write_requests"] + step,
            )  # fmt: skip
    return readings


def measure_fold(counters: Counters, engine: Engine) -> list[Unit]:
    units = []
    for label, step in (("idle guest (counters still)", 0), ("busy guest (counters moved)", 1)):
        total = Tally()
        running = 0
        by_query: Mapping[str, Tally] = {}
        for _ in range(REPEATS):
            readings = guest_readings(engine, step)
            running = len(readings)
            tally, by_query = counters.measure(BENCH_ROLE, partial(fold_guest_io, engine, readings))
            total += tally
        units.append(Unit(f"guest I/O fold, {label}", "running VM",
                          total.times(1 / (REPEATS * running)),
                          queries=per_unit(by_query, running)))  # fmt: skip
    return units


def measure_metering(counters: Counters, engine: Engine) -> list[Unit]:
    billing = Billing(engine, BillingSettings(enabled=True))
    with engine.connect() as connection:
        server_count = len(connection.execute(select(servers.c.uuid)).all())
        accounts = len(billing_store.all_accounts(connection))
    billing.meter()  # the first round only marks where metering starts
    rounds: dict[str, Tally] = {}
    for _ in range(REPEATS):
        time.sleep(0.01)  # each round meters a new span
        for query, tally in counters.measure(BENCH_ROLE, billing.meter)[1].items():
            rounds[query] = rounds.get(query, Tally()) + tally
    by_query = per_unit(rounds, REPEATS)
    # A round's own: its transaction and its read of every account (whose rows count per
    # account); each account's servers are read once a round (their configurations give cpu
    # and mem), one row each.
    own = [query for query in by_query if is_round_statement(query)]
    per_round = replace(sum((by_query[query] for query in own), Tally()), rows_read=0)
    everything = sum(by_query.values(), Tally())
    per_account = (everything - per_round - Tally(rows_read=server_count)).times(1 / accounts)
    return [
        Unit("metering: per round", "round", per_round,
             queries={query: by_query[query] for query in own}),
        Unit("metering: per account", "account", per_account,
             queries=per_unit({q: by_query[q] for q in by_query if q not in own}, accounts)),
        Unit("metering: per server", "server", Tally(rows_read=1)),
    ]  # fmt: skip


def is_round_statement(query: str) -> bool:
    """Whether a statement of metering is once per round: its transaction's, or the read of
    every account (`all_accounts`)."""
    words = " ".join(query.split())
    return words in ("BEGIN", "COMMIT") or (
        words.startswith("SELECT") and "FROM users WHERE users.key_hash" in words
    )


def image_once(
    counters: Counters, daemon: Daemon, engine: Engine, size: int
) -> tuple[Tally, float, Mapping[str, Tally]]:
    """One imaging job of a `size`-byte drive through the API: what the daemon did on the
    database from the POST to the job's end, and the job's seconds."""
    source = create_drive(daemon, size, "none")
    # Data throughout: holes are skipped unpaced, and the job would end at once.
    api_post(daemon, f"/drives/{source}/write", b"\x01" * size)
    target = create_drive(daemon, size, "none")
    seconds = [0.0]

    def job() -> None:
        began = time.monotonic()
        api_post(daemon, f"/drives/{target}/image/{source}", b" ")
        deadline = began + JOB_TIMEOUT
        while time.monotonic() < deadline:
            with engine.connect() as connection:  # as oh_bench: not counted with the job
                states = connection.execute(select(jobs.c.state)).scalars().all()
            if states and all(state in ("done", "failed") for state in states):
                seconds[0] = time.monotonic() - began
                return
            time.sleep(0.05)
        raise RuntimeError(f"imaging did not end in {JOB_TIMEOUT} s")

    tally, by_query = counters.measure(DAEMON_ROLE, job)
    return tally, seconds[0], by_query


def measure_imaging(counters: Counters, daemon: Daemon, engine: Engine) -> list[Unit]:
    """A short and a long job (held to `IMAGE_RATE`): the fixed part of a job and the part
    per second of it (its progress reports, every 0.5 s)."""
    short, short_seconds, _ = image_once(counters, daemon, engine, IMAGE_RATE)
    long, long_seconds, by_query = image_once(counters, daemon, engine, IMAGE_RATE * 4)
    per_second = (long - short).times(1 / (long_seconds - short_seconds))
    return [
        Unit(f"imaging job of {short_seconds:.1f} s", "job", short),
        Unit(f"imaging job of {long_seconds:.1f} s", "job", long, queries=by_query),
        Unit("imaging job: fixed part", "job", short - per_second.times(short_seconds)),
        Unit("imaging job: per second it runs", "second", per_second),
    ]


def measure_real_guest(counters: Counters, daemon: Daemon, env: Mapping[str, str]) -> list[Unit]:
    """The stand-in checked once: the daemon restarted on QEMU (TCG here) with one tiny
    guest; the daemon's own fold of it, as it comes (30 s after the daemon's start), counted.
    The server is stopped through the API (a stopping daemon leaves VMs running) and
    whatever QEMU is left under its run directory killed by its PID."""
    image = build_tiny_guest()
    daemon.process.stop()
    # Unix socket paths must stay short, and QEMU may run as another user.
    run_dir = Path(tempfile.mkdtemp(prefix="ohc-", dir="/tmp"))
    run_dir.chmod(0o755)
    real_env = {**env, "OH_HYPERVISOR_DRIVER": "qemu", "OH_HYPERVISOR_RUN_DIR": str(run_dir)}
    real = DaemonProcess(daemon.state_dir, daemon.log, port=daemon.port, env=real_env)
    try:
        drive = create_drive(daemon, image.stat().st_size, "none")
        api_post(daemon, f"/drives/{drive}/write", image.read_bytes())
        body = f"name real\ncpu 500\nmem 64\nide:0:0 {drive}\nboot ide:0:0\n".encode()
        answer = api_post(daemon, "/servers/create", body)
        server = answer.split("server ", 1)[1].split()[0] if "server " in answer else ""
        try:
            if "status active" not in answer:
                raise RuntimeError(f"the real guest did not start:\n{answer}")
            before = counters.snapshot()
            deadline = time.monotonic() + REAL_FOLD_TIMEOUT
            while (
                not counters.background
                & Counters.difference(before, counters.snapshot(), DAEMON_ROLE).keys()
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not fold in {REAL_FOLD_TIMEOUT} s")
                time.sleep(0.2)
            time.sleep(1.0)  # the rest of the fold's transaction
            by_query = Counters.difference(before, counters.snapshot(), DAEMON_ROLE)
        finally:
            if server:
                api_post(daemon, f"/servers/{server}/stop")
    finally:
        real.stop()
        kill_leftover_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return [Unit("guest I/O fold, a real QEMU guest (the daemon's)", "running VM",
                 sum(by_query.values(), Tally()), queries=by_query)]  # fmt: skip


def measure_heartbeats(
    counters: Counters, daemon: Daemon, env: Mapping[str, str], engine: Engine
) -> list[Unit]:
    """The daemon restarted beating every second, two simulated hosts beating every second
    from here through `Hosts.heartbeat`, for `HEARTBEAT_WINDOW` seconds."""
    daemon.process.stop()
    fast = DaemonProcess(daemon.state_dir, daemon.log, port=daemon.port,
                         env={**env, "OH_HOST_HEARTBEAT_SECONDS": "1"})  # fmt: skip
    try:
        simulated = []
        for name in SIMULATED_HOSTS:
            hosts = Hosts(engine, load_config(env={}, overrides={"host": {"name": name}}))
            hosts.register()
            simulated.append(hosts)
        time.sleep(1.5)  # the restart's own adoption and registration are not beats
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(1.0):
                for hosts in simulated:
                    hosts.heartbeat()

        before = counters.snapshot()
        beater = threading.Thread(target=beat)
        beater.start()
        try:
            time.sleep(HEARTBEAT_WINDOW)
        finally:  # an interrupted run must not leave the thread beating
            stop.set()
            beater.join()
        after = counters.snapshot()
    finally:
        fast.stop()
    units = []
    for role, label in ((DAEMON_ROLE, "the daemon's own"), (BENCH_ROLE, "simulated hosts'")):
        by_query = Counters.difference(before, after, role)
        beats = sum(t.writes for q, t in by_query.items() if q.lstrip().startswith("UPDATE hosts"))
        total = sum(by_query.values(), Tally())
        units.append(Unit(f"host heartbeat, {label} ({beats:.0f} beats)", "beat",
                          total.times(1 / max(1, beats)),
                          queries=per_unit(by_query, max(1, beats))))  # fmt: skip
    return units


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """The platform the model is for, and the assumed rates of what its users do."""

    hosts: int = 1_000
    servers: int = 100_000  # all running
    servers_per_account: int = 10
    drives_per_server: int = 2
    dashboards_open: float = 0.10  # share of accounts with a dashboard open
    dashboard_poll_seconds: float = 10.0  # servers/info and drives/info each, per dashboard
    api_requests_per_server: float = 0.01  # per second: single-object info calls of clients
    imaging_jobs_per_hour: float = 600.0
    imaging_job_seconds: float = 60.0
    busy_share: float = 1.0  # share of guests whose counters moved since their last fold


@dataclass(frozen=True)
class Line:
    """One line of the model: `rate` units per second, each costing `per_unit`."""

    activity: str
    rate: float
    per_unit: Tally
    cpu_seconds: float = 0.0  # API node CPU per unit

    @property
    def load(self) -> Tally:
        return self.per_unit.times(self.rate)


def model(costs: Mapping[str, Unit], s: Scenario) -> list[Line]:
    """Each activity of `s` per second times its measured cost per unit. `costs` by key:
    heartbeat, fold_idle, fold_busy, metering_round, metering_account, metering_server,
    servers_fixed, servers_object, drives_fixed, drives_object, server_info, drive_info,
    imaging_fixed, imaging_second.

    A fold is one transaction per host (all its running VMs) and metering one per round (all
    accounts): their transactions are counted per round, not per VM or account as measured
    at the small scale."""
    accounts = s.servers / s.servers_per_account
    dashboards = accounts * s.dashboards_open
    fold = costs["fold_busy"].tally.times(s.busy_share) + costs["fold_idle"].tally.times(
        1 - s.busy_share
    )
    metering = costs["metering_account"].tally + costs["metering_server"].tally.times(
        s.servers_per_account
    )
    one_transaction = Tally(transactions=1)

    def info(kind: str, objects: float) -> tuple[Tally, float]:
        fixed, each = costs[f"{kind}_fixed"], costs[f"{kind}_object"]
        return (fixed.tally + each.tally.times(objects),
                fixed.cpu_seconds + each.cpu_seconds * objects)  # fmt: skip

    servers_info = info("servers", s.servers_per_account)
    drives_info = info("drives", s.servers_per_account * s.drives_per_server)
    jobs_per_second = s.imaging_jobs_per_hour / 3600
    api_per_kind = s.servers * s.api_requests_per_server / 2
    return [
        Line("host heartbeats", s.hosts / HEARTBEAT_SECONDS, costs["heartbeat"].tally),
        Line("guest I/O folds (per VM)", s.servers / FOLD_SECONDS,
             replace(fold, transactions=0)),
        Line("guest I/O folds (per host)", s.hosts / FOLD_SECONDS, one_transaction),
        Line("metering (per account)", accounts / METERING_SECONDS,
             replace(metering, transactions=0)),
        Line("metering (rounds)", 1 / METERING_SECONDS, costs["metering_round"].tally),
        Line("dashboards: servers/info", dashboards / s.dashboard_poll_seconds, *servers_info),
        Line("dashboards: drives/info", dashboards / s.dashboard_poll_seconds, *drives_info),
        Line("API clients: servers/S/info", api_per_kind, costs["server_info"].tally,
             costs["server_info"].cpu_seconds),
        Line("API clients: drives/D/info", api_per_kind, costs["drive_info"].tally,
             costs["drive_info"].cpu_seconds),
        Line("imaging jobs", jobs_per_second, costs["imaging_fixed"].tally),
        # Each running job costs its part per second.
        Line("imaging jobs running", jobs_per_second * s.imaging_job_seconds,
             costs["imaging_second"].tally),
    ]  # fmt: skip


def api_cores(lines: list[Line]) -> float:
    """CPU cores of API nodes the lines' requests take (their measured CPU per request)."""
    return sum(line.rate * line.cpu_seconds for line in lines)


def api_nodes(lines: list[Line]) -> int:
    """API daemons needed for the lines' requests, each kept to `NODE_CORE_SHARE` of a core."""
    return max(1, math.ceil(api_cores(lines) / NODE_CORE_SHARE))


# -- the run --------------------------------------------------------------------------------


# The interval at which each periodic activity recurs per unit, to give its rate per unit.
INTERVALS = {"host heartbeat": HEARTBEAT_SECONDS, "guest I/O fold": FOLD_SECONDS,
             "metering": METERING_SECONDS}  # fmt: skip
# One API node is one daemon process: its event loop is one thread, kept below this share of
# a core so that answers stay prompt.
NODE_CORE_SHARE = 0.6


def print_units(units: list[Unit]) -> None:
    print(f"{'activity':52} {'unit':10} {'xacts':>6} {'reads':>7} {'writes':>7} {'rows r':>8}"
          f" {'rows w':>7} {'WAL B':>7} {'CPU ms':>7} {'stmts/s':>8} {'rows/s':>7}")  # fmt: skip
    for unit in units:
        t = unit.tally
        interval = next((s for name, s in INTERVALS.items() if unit.activity.startswith(name)),
                        None)  # fmt: skip
        rates = (f" {t.statements / interval:8.3f} {(t.rows_read + t.rows_written) / interval:7.3f}"
                 if interval else "")  # fmt: skip
        print(f"{unit.activity[:52]:52} {unit.unit:10} {t.transactions:6.2f} {t.reads:7.2f}"
              f" {t.writes:7.2f} {t.rows_read:8.1f} {t.rows_written:7.2f} {t.wal_bytes:7.0f}"
              f" {unit.cpu_seconds * 1000:7.2f}{rates}")  # fmt: skip
    print(
        "(per unit; stmts/s and rows/s: per unit at the daemon's interval for it; CPU: the"
        " daemon's per request)"
    )


def print_statements(title: str, by_query: Mapping[str, Tally]) -> None:
    """The statements of one unit of an activity, most frequent first."""
    print(f"{title}:")
    for query, tally in sorted(by_query.items(), key=lambda item: -item[1].statements)[:6]:
        if tally.statements:
            print(f"  {tally.statements:6.2f} × {' '.join(query.split())[:110]}")


def print_model(lines: list[Line], s: Scenario) -> None:
    print(f"\nmodel: {s.hosts} hosts, {s.servers} running servers, {s.servers_per_account}"
          f" per account, {s.drives_per_server} drives each")  # fmt: skip
    print(f"{'activity':30} {'units/s':>9} {'xacts/s':>9} {'reads/s':>9} {'writes/s':>9}"
          f" {'rows r/s':>10} {'rows w/s':>9} {'WAL MB/s':>9} {'API cores':>9}")  # fmt: skip
    total = Tally()
    for line in lines:
        total += line.load
        load = line.load
        print(f"{line.activity:30} {line.rate:9.1f} {load.transactions:9.0f} {load.reads:9.0f}"
              f" {load.writes:9.0f} {load.rows_read:10.0f} {load.rows_written:9.0f}"
              f" {load.wal_bytes / 1e6:9.2f} {line.rate * line.cpu_seconds:9.2f}")  # fmt: skip
    print(f"{'total':30} {'':9} {total.transactions:9.0f} {total.reads:9.0f}"
          f" {total.writes:9.0f} {total.rows_read:10.0f} {total.rows_written:9.0f}"
          f" {total.wal_bytes / 1e6:9.2f} {api_cores(lines):9.2f}")  # fmt: skip
    requests = sum(line.rate for line in lines if line.cpu_seconds)
    print(f"API: {requests:.0f} requests/s, {api_cores(lines):.1f} cores →"
          f" {api_nodes(lines)} API nodes (one daemon each, at most {NODE_CORE_SHARE:.0%} of a"
          f" core); database connections if every host keeps a pool of {POOL_SIZE}"
          f" (+{POOL_SIZE} overflow): {s.hosts * POOL_SIZE}-{s.hosts * POOL_SIZE * 2}")  # fmt: skip


def run() -> float:
    began = time.monotonic()
    server = PostgresServer(PG_SETTINGS)
    try:
        database = server.new_database()
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
            # The settings given after testbed's own (which turn full pages off) win.
            shown = admin.execute("SHOW full_page_writes").fetchone()
            if shown is None or shown[0] != "on":
                raise RuntimeError(f"full_page_writes is {shown}: the WAL would be undercounted")
            admin.execute(f"CREATE ROLE {BENCH_ROLE} SUPERUSER LOGIN")
        counters = Counters(server, database)
        engine = create_store_engine(
            server.url(database).replace(f"//{DAEMON_ROLE}@", f"//{BENCH_ROLE}@")
        )
        env = {
            "OH_STORE_URL": server.url(database),
            "OH_HYPERVISOR_DRIVER": "fake",
            "OH_HOST_NAME": "host-0",
            # Quiet while requests are counted: heartbeats are measured in a window of
            # their own at the end.
            "OH_HOST_HEARTBEAT_SECONDS": "3600",
            "OH_STORAGE_IMAGING_MAX_RATE": str(IMAGE_RATE),
        }
        try:
            with work_directory("capacity") as work, running_daemon(work, env=env) as daemon:
                other = create_user(daemon.state_dir, env=env)
                small = as_user(daemon, other.user, other.secret)
                big_servers = populate(daemon, BIG_SERVERS, BIG_DRIVES)
                populate(small, SMALL_SERVERS, SMALL_DRIVES)
                one_drive = create_drive(daemon, DRIVE_BYTES, "none")
                units = measure_fold(counters, engine)
                # The daemon folds the same way: its fold's statements are its background.
                counters.background = {
                    query for unit in units for query in unit.queries if "claims.holder" in query
                }
                units += measure_polls(counters, daemon, small)
                units += measure_one_object(counters, daemon, big_servers[0], one_drive)
                units += measure_metering(counters, engine)
                units += measure_imaging(counters, daemon, engine)
                units += measure_real_guest(counters, daemon, env)
                units += measure_heartbeats(counters, daemon, env, engine)
        finally:
            engine.dispose()
            counters.close()
    finally:
        server.stop()
    print_units(units)
    for unit in units:
        if unit.queries and not unit.activity.startswith(
            ("/servers/info (3 ", "/drives/info (30 ")
        ):
            print_statements(f"{unit.activity}, per {unit.unit}", unit.queries)
    costs = cost_keys(units)
    scenario = Scenario()
    lines = model(costs, scenario)
    print_model(lines, scenario)
    print(f"capacity: measured in {time.monotonic() - began:.0f} s")
    return api_cores(lines)


def cost_keys(units: list[Unit]) -> dict[str, Unit]:
    """The measured units under the keys `model` takes."""

    def find(prefix: str) -> Unit:
        return next(unit for unit in units if unit.activity.startswith(prefix))

    daemon_beat, simulated_beat = find("host heartbeat, the daemon"), find("host heartbeat, sim")
    return {
        "heartbeat": simulated_beat if simulated_beat.tally.writes else daemon_beat,
        "fold_idle": find("guest I/O fold, idle"),
        "fold_busy": find("guest I/O fold, busy"),
        "metering_round": find("metering: per round"),
        "metering_account": find("metering: per account"),
        "metering_server": find("metering: per server"),
        "servers_fixed": find("/servers/info: fixed"),
        "servers_object": find("/servers/info: per object"),
        "drives_fixed": find("/drives/info: fixed"),
        "drives_object": find("/drives/info: per object"),
        "server_info": find("/servers/S/info"),
        "drive_info": find("/drives/D/info"),
        "imaging_fixed": find("imaging job: fixed"),
        "imaging_second": find("imaging job: per second"),
    }
