"""Requests per second of authenticated cheap GETs against a hello-world aiohttp handler on
the same server set-up: `/drives/list`, one drive's `/drives/D/info` and `/servers/info` (a
few stopped servers). Goal: ≥ 0.7× for the list.

Requests per second swing with the load of the (shared) machine; the CPU time each process
spent per request (utime + stime over each run) is printed beside as the steadier figure."""

import statistics
import subprocess
import sys

from bench.harness import (
    free_port,
    report,
    running_daemon,
    stop_process,
    wait_listening,
    work_directory,
    wrk_requests_per_second,
)
from bench.vm_scale import cpu_seconds
from testbed.daemon_process import Api

SECONDS = 3
ROUNDS = 3  # alternate ours and the anchor, and keep each one's median: load comes and goes
OBJECTS = 3  # drives and servers: the answers are not empty, and stay small


def run() -> float:
    with work_directory("api") as work_dir, running_daemon(work_dir) as daemon:
        api = Api(daemon, daemon.url)
        drives = [
            api.properties("/drives/create", b"size 1M\nencryption:cipher none")["drive"]
            for _ in range(OBJECTS)
        ]
        for index in range(OBJECTS):
            api.properties("/servers/create/stopped", f"name s{index}\ncpu 500\nmem 64".encode())
        paths = ["/drives/list", f"/drives/{drives[0]}/info", "/servers/info"]
        port = free_port()
        hello = subprocess.Popen([sys.executable, "-m", "bench.hello_server", str(port)])
        ours_runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
        anchor_runs = []
        try:
            wait_listening(port, hello)
            for _ in range(ROUNDS):
                for path in paths:
                    ours_runs[path].append(_measured(
                        daemon.process.pid, f"{daemon.url}{path}",
                        {"Authorization": daemon.auth_header},
                    ))  # fmt: skip
                anchor_runs.append(_measured(hello.pid, f"http://127.0.0.1:{port}/hello", {}))
        finally:
            stop_process(hello)
    anchor = statistics.median(rate for rate, _ in anchor_runs)
    anchor_cpu = statistics.median(cpu for _, cpu in anchor_runs)
    names = ["GET /drives/list", "GET /drives/D/info", f"GET /servers/info ({OBJECTS} stopped)"]
    ratios = []
    for name, path in zip(names, paths, strict=True):
        ours = statistics.median(rate for rate, _ in ours_runs[path])
        ratios.append(report(f"api {name} (auth, SQLite)", ours, "aiohttp hello world", anchor,
                             "req/s", "≥ 0.7"))  # fmt: skip
        cpu = statistics.median(cpu for _, cpu in ours_runs[path])
        report(f"api {name} CPU per request", cpu, "aiohttp hello world", anchor_cpu, "µs",
               "≥ 0.7", ratio=anchor_cpu / cpu)  # fmt: skip
    return ratios[0]


def _measured(pid: int, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """Requests per second of `url` under wrk, and the µs of CPU process `pid` spent per
    request meanwhile."""
    before = cpu_seconds(pid)
    rate = wrk_requests_per_second(url, headers, SECONDS)
    return rate, (cpu_seconds(pid) - before) / (rate * SECONDS) * 1e6
