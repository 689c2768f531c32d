"""Running VMs at scale: 16 servers started at once, and the daemon's own cost per running VM.

1. **16 starts at once.** 16 clients each `POST /servers/create` a server (the tiny guest,
   64 MiB, its own drive) at the same moment; the figure is the time until every answer says
   `status active`. The anchor is 16 bare `qemu-system-x86_64` started at once with the very
   command lines our daemon gave those VMs (read from /proc/PID/cmdline, moved to run
   directories of their own, after our servers were stopped), timed until each one's QMP
   socket answers `qmp_capabilities`. A first round through the API warms the daemon and
   gives those command lines (it is printed); then `START_ROUNDS` rounds of each, bare and
   through the API alternated, and the figure is the median of each: one round of each
   swung from 0.70× to 1.41× from run to run on this shared 2-core machine. Goal: ≤ 1.3×.
   The servers have no NIC (as in bench/server_boot.py): a NIC's passt is the platform's.
2. **20 running VMs.** 20 such servers run (the API has no pause: the guests boot and idle;
   the tiny guest prints little, `quiet`). The daemon's RSS and CPU time (utime + stime of
   /proc/PID/stat) are sampled over `SAMPLE_SECONDS` with them and over a shorter window with
   none, after the first 16 had come and gone (so the code paths are warm either way); the
   figures are the difference per VM. Goals: under 1 MiB and under 0.1 % of a core per VM.
   Then the latency of `GET /servers/info` (20 servers, p50 and p99) on one connection.

Every QEMU this benchmark starts is killed by its PID at the end (the bare ones from their
pidfiles, ours through the daemon's run directory), whatever happened. A run takes about two
minutes here (TCG, 2 shared cores). `OH_BENCH_VM_SCALE_SECONDS` shortens the sampling,
`OH_BENCH_VM_SCALE_STARTS` and `OH_BENCH_VM_SCALE_RUNNING` (≥ the starts) the counts.
"""

import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.drive_data import api_post, create_drive
from bench.harness import Daemon, report, running_daemon, work_directory
from bench.reliability.load import percentile, rss_bytes
from testbed.build_guest import build_tiny_guest
from testbed.leftovers import kill_leftover_vms

STARTS = int(os.environ.get("OH_BENCH_VM_SCALE_STARTS", "16"))
START_ROUNDS = int(os.environ.get("OH_BENCH_VM_SCALE_START_ROUNDS", "3"))
RUNNING = int(os.environ.get("OH_BENCH_VM_SCALE_RUNNING", "20"))
MEM_MB = 64
SAMPLE_SECONDS = float(os.environ.get("OH_BENCH_VM_SCALE_SECONDS", "30"))
BASELINE_SECONDS = SAMPLE_SECONDS / 3
SETTLE_SECONDS = 5.0
INFO_REQUESTS = 200
QMP_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sample(pid: int, seconds: float) -> tuple[float, int]:
    """(share of one core, RSS in bytes at the end) of `pid` over `seconds`."""
    cpu, began = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - began), rss_bytes(pid)


def server_body(name: str, drive: str) -> bytes:
    return f"name {name}\ncpu 500\nmem {MEM_MB}\nide:0:0 {drive}\nboot ide:0:0\n".encode()


def start_servers(daemon: Daemon, drives: list[str]) -> tuple[float, list[str]]:
    """Create and start a server on each of `drives`, all at once; (seconds until every one
    is active, their uuids)."""

    def create(index: int) -> str:
        answer = api_post(daemon, "/servers/create", server_body(f"s{index}", drives[index]))
        fields = dict(line.split(" ", 1) for line in answer.splitlines() if " " in line)
        if fields.get("status") != "active":
            raise RuntimeError(f"server {index} not active:\n{answer}")
        return fields["server"]

    with ThreadPoolExecutor(len(drives)) as pool:
        began = time.perf_counter()
        servers = list(pool.map(create, range(len(drives))))
        return time.perf_counter() - began, servers


def stop_servers(daemon: Daemon, servers: list[str]) -> None:
    """Stop (and so destroy: they are not persistent) `servers`; returns once all are gone."""
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda server: api_post(daemon, f"/servers/{server}/stop"), servers))


def our_argvs(run_dir: Path, servers: list[str]) -> list[list[str]]:
    """The command lines of the running VMs of `servers`, as their processes hold them."""
    argvs = []
    for server in servers:
        pid = int((run_dir / server / "qemu.pid").read_text())
        argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0"))
    return argvs


def qmp_answers(path: Path, deadline: float) -> None:
    """Return once the QMP socket at `path` has answered `qmp_capabilities`."""
    while time.perf_counter() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as connection:
                connection.settimeout(max(0.1, deadline - time.perf_counter()))
                connection.connect(str(path))
                reader = connection.makefile("rb")
                reader.readline()  # the greeting
                connection.sendall(b'{"execute": "qmp_capabilities"}\n')
                if b"return" in reader.readline():
                    return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.005)
    raise RuntimeError(f"QMP at {path} did not answer in {QMP_TIMEOUT} s")


def bare_starts(argvs: list[list[str]], run_dir: Path, bare_dir: Path) -> float:
    """Start every command line at once, moved from `run_dir` to `bare_dir`; seconds until
    each QMP socket answered. Kills them afterwards, by the pids of their pidfiles."""
    moved = [[word.replace(str(run_dir), str(bare_dir)) for word in argv] for argv in argvs]
    for argv in moved:
        pidfile = Path(argv[argv.index("-pidfile") + 1])
        pidfile.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sockets = [Path(_option_path(argv, "id=qmp")) for argv in moved]
    try:
        with ThreadPoolExecutor(len(moved)) as pool:
            began = time.perf_counter()
            deadline = began + QMP_TIMEOUT

            def start(index: int) -> None:
                subprocess.run(moved[index], check=True, timeout=QMP_TIMEOUT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
                qmp_answers(sockets[index], deadline)

            list(pool.map(start, range(len(moved))))
            return time.perf_counter() - began
    finally:
        for pidfile in bare_dir.glob("*/qemu.pid"):
            kill_pid(int(pidfile.read_text()))


def _seconds(rounds: list[float]) -> str:
    return " / ".join(f"{seconds:.2f}" for seconds in rounds) + " s"


def _option_path(argv: list[str], marker: str) -> str:
    option = next(word for word in argv if marker in word and "path=" in word)
    return next(part for part in option.split(",") if part.startswith("path="))[5:]


def kill_pid(pid: int) -> None:
    """SIGKILL a QEMU this benchmark started, and wait (bounded) until it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def info_latencies(daemon: Daemon, count: int) -> list[float]:
    """Sorted latencies of `count` GET /servers/info on one keep-alive connection."""
    latencies = []
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    try:
        for _ in range(count):
            sent = time.perf_counter()
            headers = {"Authorization": daemon.auth_header}
            connection.request("GET", "/servers/info", headers=headers)
            response = connection.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                raise RuntimeError(f"servers/info: {response.status} {body[:200]!r}")
    finally:
        connection.close()
    return sorted(latencies)


def count_active(daemon: Daemon) -> int:
    answer = api_post(daemon, "/servers/info")
    return sum(1 for line in answer.splitlines() if line == "status active")


def run() -> float:
    image = build_tiny_guest()
    # Unix socket paths must stay short, and QEMU may run as another user: short, open
    # parent directories, the bare ones' path as long as ours.
    run_dir = Path(tempfile.mkdtemp(prefix="ohb-", dir="/tmp"))
    bare_dir = Path(tempfile.mkdtemp(prefix="ohq-", dir="/tmp"))
    for directory in (run_dir, bare_dir):
        directory.chmod(0o755)
    try:
        with (
            work_directory("vm-scale") as work,
            running_daemon(work, env={"OH_HYPERVISOR_RUN_DIR": str(run_dir)}) as daemon,
        ):
            data = image.read_bytes()

            def drive(_: int) -> str:
                uuid = create_drive(daemon, len(data), "none")
                api_post(daemon, f"/drives/{uuid}/write", data)
                return uuid

            with ThreadPoolExecutor(4) as pool:
                drives = list(pool.map(drive, range(RUNNING)))
            pid = daemon.process.pid

            # 1. 16 at once through the API (a first round warms the daemon, whose first
            # start imports and caches what every later one uses, and gives the command
            # lines), then the same command lines bare and rounds through the API, in turn.
            first, servers = start_servers(daemon, drives[:STARTS])
            argvs = our_argvs(run_dir, servers)
            stop_servers(daemon, servers)
            bare_rounds, our_rounds = [], []
            for _ in range(START_ROUNDS):
                bare_rounds.append(bare_starts(argvs, run_dir, bare_dir))
                seconds, servers = start_servers(daemon, drives[:STARTS])
                stop_servers(daemon, servers)
                our_rounds.append(seconds)
            ours, bare = statistics.median(our_rounds), statistics.median(bare_rounds)
            print(f"vm-scale: {STARTS} starts at once: API {_seconds(our_rounds)} (first round"
                  f" {first:.2f} s), bare {_seconds(bare_rounds)}", flush=True)  # fmt: skip

            # 2. The daemon idle with none, then with 20 running VMs. Both after SETTLE_SECONDS:
            # right after the stops, the daemon is still ending their VMs (one full run measured
            # 1.6 % of a core "idle" there, then 0.17 % with 20 VMs: a negative cost per VM).
            time.sleep(SETTLE_SECONDS)
            cpu_none, rss_none = sample(pid, BASELINE_SECONDS)
            _, servers = start_servers(daemon, drives)
            time.sleep(SETTLE_SECONDS)
            cpu_all, rss_all = sample(pid, SAMPLE_SECONDS)
            active = count_active(daemon)
            latencies = info_latencies(daemon, INFO_REQUESTS)
            stop_servers(daemon, servers)
            if active != RUNNING:
                raise RuntimeError(f"{active} of {RUNNING} servers active at the end")
            rss_per_vm = (rss_all - rss_none) / RUNNING
            cpu_per_vm = (cpu_all - cpu_none) / RUNNING
            print(
                f"vm-scale: daemon idle with 0 VMs: {cpu_none * 100:.3f} % of a core,"
                f" RSS {rss_none / 2**20:.1f} MiB; with {RUNNING}: {cpu_all * 100:.3f} %,"
                f" RSS {rss_all / 2**20:.1f} MiB",
                flush=True,
            )
            report("daemon RSS per running VM", rss_per_vm / 2**20, "goal", 1.0, "MiB", "< 1")
            report("daemon CPU per running VM", cpu_per_vm * 100, "goal", 0.1, "% of a core",
                   "< 1")  # fmt: skip
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(f"servers/info with {RUNNING} running: p50 {p50 * 1000:.2f} ms,"
                  f" p99 {p99 * 1000:.2f} ms", flush=True)  # fmt: skip
            return report(
                f"{STARTS} servers created and started at once → all active (median of"
                f" {START_ROUNDS})",
                ours,
                f"{STARTS} bare qemu-system-x86_64 at once → QMP answers",
                bare,
                "s",
                "≤ 1.3",
            )
    finally:
        for pidfile in bare_dir.glob("*/qemu.pid"):
            kill_pid(int(pidfile.read_text()))
        kill_leftover_vms(run_dir)
        shutil.rmtree(bare_dir, ignore_errors=True)
