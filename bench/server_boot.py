"""Server boot: `POST /servers/create` until the guest's first serial line, against a bare
`qemu-system-x86_64` started by hand with the same drive and accelerator. Goal: ≤ 1.2×.

Both are timed from the start of the request (or of the process) to the first complete line
of guest output in the serial log, polled every 10 ms. The guest is the tiny test guest
(testbed/build_guest.py); the anchor opens the very drive file the server boots from.
The two alternate, `ROUNDS` times each, and the medians are compared. Under TCG a boot takes
7-11 s, so a run takes about a minute.
"""

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.drive_data import api_post, create_drive
from bench.harness import Daemon, report, running_daemon, work_directory
from openhosting.hypervisor import process
from openhosting.hypervisor.argv import choose_accelerator
from testbed.build_guest import build_tiny_guest

ROUNDS = int(os.environ.get("OH_BENCH_ROUNDS", "3"))
BOOT_TIMEOUT = 120  # TCG on a busy machine
POLL_INTERVAL = 0.01
MEM_MB = 256


def first_line_seconds(log: Path, started: float) -> float:
    """Seconds from `started` (a perf_counter) until `log` holds a complete line."""
    deadline = started + BOOT_TIMEOUT
    while time.perf_counter() < deadline:
        try:
            if b"\n" in log.read_bytes():
                return time.perf_counter() - started
        except FileNotFoundError:
            pass  # QEMU has not created it yet
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"no guest output in {log} after {BOOT_TIMEOUT} s")


def api_boot(daemon: Daemon, run_dir: Path, drive: str) -> float:
    """Create a server on `drive`, time its first serial line, then stop (and so destroy) it."""
    body = f"name boot\ncpu 2000\nmem {MEM_MB}\nide:0:0 {drive}\nboot ide:0:0\n".encode()
    started = time.perf_counter()
    answer = api_post(daemon, "/servers/create", body)
    server = next(line.split()[1] for line in answer.splitlines() if line.startswith("server "))
    try:
        return first_line_seconds(run_dir / server / "serial.log", started)
    finally:
        # Returns once QEMU has exited; a non-persistent server is destroyed with it.
        api_post(daemon, f"/servers/{server}/stop")


def bare_boot(drive_file: Path, accelerator: str, work: Path) -> float:
    """The same guest from the same file, by hand: the devices our servers have, no more."""
    log = work / "bare-serial.log"
    log.unlink(missing_ok=True)
    argv = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", accelerator,
        "-cpu", "host" if accelerator == "kvm" else "qemu64", "-m", f"{MEM_MB}M",
        "-nodefaults", "-display", "none", "-device", "VGA",
        "-drive", f"file={drive_file},format=raw,if=ide,index=0,media=disk",
        "-serial", f"file:{log}",
    ]  # fmt: skip
    started = time.perf_counter()
    qemu = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return first_line_seconds(log, started)
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


def kill_vms(run_dir: Path) -> None:
    """Kill any VM a failed run left behind (the daemon's SIGTERM leaves VMs running)."""
    for server_dir in run_dir.iterdir():
        pid = process.adopt(server_dir, server_dir.name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def run() -> float:
    image = build_tiny_guest()
    accelerator = choose_accelerator("auto")
    # Unix socket paths must stay short, and QEMU may run as another user: a short, open
    # parent directory.
    run_dir = Path(tempfile.mkdtemp(prefix="ohb-", dir="/tmp"))
    run_dir.chmod(0o755)
    try:
        with (
            work_directory("server-boot") as work,
            running_daemon(work, env={"OH_HYPERVISOR_RUN_DIR": str(run_dir)}) as daemon,
        ):
            data = image.read_bytes()
            drive = create_drive(daemon, len(data), "none")
            api_post(daemon, f"/drives/{drive}/write", data)
            drive_file = daemon.state_dir / "drives" / f"{drive}.img"
            if not drive_file.exists():
                raise RuntimeError(f"the drive's file is not at {drive_file}")
            api_times, bare_times = [], []
            for _ in range(ROUNDS):
                bare_times.append(bare_boot(drive_file, accelerator, work))
                api_times.append(api_boot(daemon, run_dir, drive))
            print(
                f"boot ({accelerator}): API {', '.join(f'{t:.2f}' for t in api_times)} s;"
                f" bare {', '.join(f'{t:.2f}' for t in bare_times)} s",
                flush=True,
            )
            return report(
                "create → first serial line (median)",
                statistics.median(api_times),
                "bare qemu-system-x86_64",
                statistics.median(bare_times),
                "s",
                "≤ 1.2",
            )
    finally:
        kill_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
