"""Suspend and resume: `host suspend` then `host resume` of one tiny guest with 256 MiB of
memory, through the running daemon, against `cp` of a 256 MiB file on the same disk (then
`sync` of the copy: a dump is synced too, it must survive a power cut). Goal: ≤ 2×.

The daemon's side is timed from the request to its operator listener (`POST /host/suspend`,
answered once the VM is gone and its encrypted dump is on disk) to the answer of
`POST /host/resume` (the guest runs again), without the admin tool's own Python start-up.
The guest has booted to its shell first; how much of its memory it touched decides the size
of the dump (QEMU sends untouched pages as zero-page markers). The dump's size is printed.
The two alternate, `ROUNDS` times each, and the medians are compared.
"""

import http.client
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.drive_data import api_post, create_drive, make_data_file
from bench.harness import Daemon, report, running_daemon, work_directory
from openhosting.hypervisor import process
from testbed.build_guest import READY_MARKER, build_tiny_guest

ROUNDS = int(os.environ.get("OH_BENCH_ROUNDS", "3"))
MEM_MB = 256
BOOT_TIMEOUT = 120  # TCG on a busy machine
STATE_TIMEOUT = 300


def host(daemon: Daemon, action: str) -> str:
    """`POST /host/ACTION` on the daemon's operator listener; its answer."""
    port = daemon.process.metrics_port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STATE_TIMEOUT)
    try:
        connection.request("POST", f"/host/{action}")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"host {action}: {response.status} {body}")
    return body


def wait_ready(log: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while READY_MARKER.encode() not in (log.read_bytes() if log.exists() else b""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the guest did not get ready in {BOOT_TIMEOUT} s")
        time.sleep(0.2)


def suspend_resume(daemon: Daemon, server: str) -> tuple[float, int]:
    """Seconds for one suspend and resume of `server`, and its dump's size in bytes."""
    started = time.perf_counter()
    if host(daemon, "suspend") != f"{server} dumped\n":
        raise RuntimeError("the server was not dumped")
    size = (daemon.state_dir / "dumps" / f"{server}.dump").stat().st_size
    if host(daemon, "resume") != f"{server} active\n":
        raise RuntimeError("the server was not restored")
    return time.perf_counter() - started, size


def cp_seconds(source: Path, work: Path) -> float:
    target = work / "copy.bin"
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True, timeout=STATE_TIMEOUT)
    subprocess.run(["sync", str(target)], check=True, timeout=STATE_TIMEOUT)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def kill_vms(run_dir: Path) -> None:
    """Kill any VM a failed run left behind (the daemon's SIGTERM leaves VMs running)."""
    for server_dir in run_dir.iterdir():
        pid = process.adopt(server_dir, server_dir.name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def run() -> float:
    image = build_tiny_guest()
    # Unix socket paths must stay short, and QEMU may run as another user.
    run_dir = Path(tempfile.mkdtemp(prefix="ohb-", dir="/tmp"))
    run_dir.chmod(0o755)
    try:
        with (
            work_directory("suspend-resume") as work,
            running_daemon(work, env={"OH_HYPERVISOR_RUN_DIR": str(run_dir)}) as daemon,
        ):
            data = image.read_bytes()
            drive = create_drive(daemon, len(data), "none")
            api_post(daemon, f"/drives/{drive}/write", data)
            body = f"name s\ncpu 2000\nmem {MEM_MB}\nide:0:0 {drive}\nboot ide:0:0\n".encode()
            answer = api_post(daemon, "/servers/create", body)
            server = next(
                line.split()[1] for line in answer.splitlines() if line.startswith("server ")
            )
            wait_ready(run_dir / server / "serial.log")
            source = make_data_file(work / "anchor.bin", MEM_MB << 20)
            ours, anchors, sizes = [], [], []
            for _ in range(ROUNDS):
                anchors.append(cp_seconds(source, work))
                seconds, size = suspend_resume(daemon, server)
                ours.append(seconds)
                sizes.append(size)
            api_post(daemon, f"/servers/{server}/stop")
            print(
                f"suspend+resume of {MEM_MB} MiB: {', '.join(f'{t:.2f}' for t in ours)} s"
                f" (dumps of {', '.join(f'{s / 2**20:.0f}' for s in sizes)} MiB);"
                f" cp {', '.join(f'{t:.2f}' for t in anchors)} s",
                flush=True,
            )
            return report(
                "host suspend + resume (median)",
                statistics.median(ours),
                f"cp + sync of {MEM_MB} MiB",
                statistics.median(anchors),
                "s",
                "≤ 2",
            )
    finally:
        kill_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
