"""Requests per second of an authenticated cheap GET (`/drives/list`) against a hello-world
aiohttp handler on the same server set-up. Goal: ≥ 0.5×."""

import statistics
import subprocess
import sys
import urllib.request

from bench.harness import (
    free_port,
    report,
    running_daemon,
    stop_process,
    wait_listening,
    work_directory,
    wrk_requests_per_second,
)

SECONDS = 3
ROUNDS = 3  # alternate ours and the anchor, and keep each one's median: load comes and goes


def run() -> float:
    with work_directory("api") as work_dir, running_daemon(work_dir) as daemon:
        for _ in range(3):  # a few drives, so the list is not empty
            request = urllib.request.Request(
                f"{daemon.url}/drives/create",
                data=b"size 1M\nencryption:cipher none",
                headers={"Authorization": daemon.auth_header},
            )
            urllib.request.urlopen(request, timeout=30).read()
        port = free_port()
        hello = subprocess.Popen([sys.executable, "-m", "bench.hello_server", str(port)])
        ours_runs, anchor_runs = [], []
        try:
            wait_listening(port, hello)
            for _ in range(ROUNDS):
                ours_runs.append(wrk_requests_per_second(
                    f"{daemon.url}/drives/list", {"Authorization": daemon.auth_header}, SECONDS
                ))  # fmt: skip
                anchor_runs.append(
                    wrk_requests_per_second(f"http://127.0.0.1:{port}/hello", {}, SECONDS)
                )
        finally:
            stop_process(hello)
        ours, anchor = statistics.median(ours_runs), statistics.median(anchor_runs)
    return report("api GET /drives/list (auth, SQLite)", ours, "aiohttp hello world", anchor,
                  "req/s", "≥ 0.5")  # fmt: skip
