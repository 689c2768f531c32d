"""What every benchmark shares: a real daemon on loopback with a user, wrk, and the report line.

The daemon, its user and the process helpers come from testbed/daemon_process.py, the one place
that starts `openhostingd` for tests and benchmarks alike; they are named here again so that a
benchmark imports all it needs from this module.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.daemon_process import (
    BIN,
    Daemon,
    free_port,
    running_daemon,
    stop_process,
    wait_listening,
)

__all__ = [
    "BIN",
    "REPO",
    "Daemon",
    "free_port",
    "report",
    "running_daemon",
    "stop_process",
    "wait_listening",
    "work_directory",
    "wrk_requests_per_second",
]

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def work_directory(name: str) -> Iterator[Path]:
    """A scratch directory on the disk the drives live on (not tmpfs), removed afterwards."""
    base = Path(os.environ.get("OH_BENCH_DIR", REPO / "bench" / "results"))
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wrk_requests_per_second(url: str, headers: dict[str, str], seconds: int = 5) -> float:
    """Requests per second from wrk: 2 threads, 16 keep-alive connections, bounded in time."""
    command = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    for line in result.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"no Requests/sec in wrk output:\n{result.stdout}")


def report(
    name: str,
    value: float,
    anchor_name: str,
    anchor: float,
    unit: str,
    goal: str,
    ratio: float | None = None,
) -> float:
    """Print one figure beside its anchor and their ratio; return the ratio."""
    ratio = value / anchor if ratio is None else ratio
    print(
        f"{name}: {value:.1f} {unit} | anchor {anchor_name}: {anchor:.1f} {unit} |"
        f" ratio {ratio:.2f} (goal {goal})",
        flush=True,
    )
    return ratio
