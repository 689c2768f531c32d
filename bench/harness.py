"""What every benchmark shares: a real daemon on loopback, a user, wrk, and the report line."""

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server this benchmark started: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Daemon:
    url: str
    port: int
    user: str
    secret: str
    state_dir: Path
    pid: int

    @property
    def auth_header(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.secret}".encode()).decode()
        return f"Basic {token}"

    @property
    def auth(self) -> str:
        return f"{self.user}:{self.secret}"


@contextmanager
def running_daemon(work_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """`openhostingd` on a loopback port with a fresh state directory and one user."""
    state_dir = work_dir / "state"
    created = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state_dir), "user", "create"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    fields = dict(line.split(" ", 1) for line in created.stdout.splitlines() if " " in line)
    port = free_port()
    env = {**os.environ, "OH_LOG_LEVEL": "warning", **(extra_env or {})}
    with (work_dir / "daemon.log").open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "openhostingd"), "--state-dir", str(state_dir),
             "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
    try:
        wait_listening(port, process)
        yield Daemon(
            f"http://127.0.0.1:{port}", port, fields["user"], fields["secret"], state_dir,
            process.pid,
        )  # fmt: skip
    finally:
        stop(process)


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
