"""Live migration: an idle tiny guest (128 MiB of memory) with a 256 MiB drive of real data,
moved `ROUNDS` times between two QEMU drivers of this machine standing for two hosts of one
cluster CA, as `host drain` moves a server (hypervisor/migration.py): its drive mirrored over
NBD, its state sent, both over TLS with the hosts' cluster certificates, QEMU running as
`hypervisor.run_as`'s default (`nobody` as root). Streams are unix sockets (one machine).

Two figures:
- QEMU's reported downtime (`query-migrate`'s `downtime` on the source once it is done: how
  long the guest was paused for the last round) against the goal of 300 ms (goal ≤ 1);
- the whole move's time (from `live_migrate`'s call to the guest running on the target)
  against `cp` of the same 256 MiB drive file on the same disk in the same run (goal ≤ 2);
  `cp` + `sync` of the copy is printed beside it.

Copies and moves alternate, and medians are compared. Needs root (QEMU drops to `nobody`).
About a minute: one boot under TCG, then the moves.

Printed beside them, where a move's time goes: the median seconds from a move's start to
each of its steps (the target's QEMU waiting, the state's stream starting, the mirror READY,
the guest paused for the last round, the state in, the guest running on the target, the
source ended), from the daemon's clock and the source QEMU's events.
"""

import asyncio
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.drive_data import BLOCK, data_blocks
from bench.harness import report, work_directory
from openhosting.config import HypervisorSettings
from openhosting.hypervisor import process
from openhosting.hypervisor.driver import IncomingInfo, IncomingRequest, StartRequest, VmStatus
from openhosting.hypervisor.migration import MigrationTls, live_migrate, write_qemu_tls_dir
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from testbed.agent_process import make_cluster
from testbed.build_guest import READY_MARKER, build_tiny_guest
from testbed.serial_console import wait_for_log

ROUNDS = int(os.environ.get("OH_BENCH_ROUNDS", "3"))
DRIVE_BYTES = 256 << 20
MEM_MB = 128
DOWNTIME_GOAL_MS = 300.0
BOOT_TIMEOUT = 120.0  # TCG on a busy machine
MOVE_TIMEOUT = 120.0


# The source QEMU's events of a move, by the step each marks.
STEP_OF_EVENT = {
    ("MIGRATION", "setup"): "state starts",
    ("BLOCK_JOB_READY", None): "mirror READY",
    ("MIGRATION", "pre-switchover"): "guest paused",
    ("MIGRATION", "completed"): "state in",
}
STEPS = (
    "target waits", "state starts", "mirror READY", "guest paused", "state in",
    "runs on target", "source ended",
)  # fmt: skip


class MeasuredDriver(QemuDriver):
    """A QEMU driver that keeps what the source QEMU reports of each migration it sent
    (read before the source ends: the target's QEMU reports no downtime), and when each
    step of it came (`steps`: the epoch time of each, the current move's last)."""

    reports: list[dict[str, object]]
    steps: list[dict[str, float]]

    async def prepare_incoming(self, request: IncomingRequest) -> IncomingInfo:
        info = await super().prepare_incoming(request)
        self.steps[-1]["target waits"] = time.time()
        return info

    async def migrate_out(self, server: str, target: IncomingInfo, timeout: float) -> None:
        monitor = self.vm(server).monitor
        with monitor.listen(*{name for name, _status in STEP_OF_EVENT}) as events:
            await super().migrate_out(server, target, timeout)
            while (event := await events.next(0)) is not None:
                status = event.data.get("status") if event.name == "MIGRATION" else None
                if step := STEP_OF_EVENT.get((event.name, status)):
                    self.steps[-1].setdefault(step, event.timestamp)
        answer = await monitor.execute("query-migrate")
        assert isinstance(answer, dict)
        self.reports.append(answer)

    async def finish_incoming(self, server: str, timeout: float) -> VmStatus:
        status = await super().finish_incoming(server, timeout)
        self.steps[-1]["runs on target"] = time.time()
        return status


def make_drive(path: Path, image: Path) -> None:
    """The tiny guest's disk, then real data (no holes) up to 256 MiB."""
    with path.open("wb") as file:
        file.write(image.read_bytes())
        file.write(bytes(BLOCK - file.tell() % BLOCK))
        for block in data_blocks(DRIVE_BYTES - file.tell()):
            file.write(block)


def cp_seconds(source: Path, target: Path, sync: bool) -> float:
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True, timeout=MOVE_TIMEOUT)
    if sync:
        subprocess.run(["sync", str(target)], check=True, timeout=MOVE_TIMEOUT)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def moved(spec: VmSpec, target: QemuDriver, drive: Path) -> IncomingRequest:
    """The request for `spec` to move to `target`, its one drive at `drive` there."""
    request = dataclasses.replace(
        spec,
        run_dir=target.run_dir(spec.uuid),
        disks=(dataclasses.replace(spec.disks[0], path=drive),),
        incoming=True,
    )
    start = StartRequest(request, timeout=MOVE_TIMEOUT)
    return IncomingRequest(start, ((request.disks[0].slot, DRIVE_BYTES),))


@dataclasses.dataclass
class Figures:
    moves: list[float]  # seconds of each move
    downtimes: list[float]  # QEMU's downtime of each, ms
    states: list[tuple[float, int]]  # QEMU's time of each state's stream (ms) and its bytes
    copies: list[float]  # seconds of each `cp`
    synced: list[float]  # seconds of each `cp` + `sync`
    steps: list[dict[str, float]]  # of each move, seconds from its start to each step


async def measure(work: Path, hosts: Path) -> Figures:
    """Boot the guest on one driver, then move it `ROUNDS` times, a copy before each."""
    cluster = make_cluster(hosts)
    settings = HypervisorSettings(accelerator="tcg", stop_timeout=5)
    drivers = []
    reports: list[dict[str, object]] = []  # both drivers', in the order of the moves
    steps: list[dict[str, float]] = []  # both drivers', in the order of the moves
    for name in "ab":
        tls_dir = hosts / f"tls-{name}"
        bundle = cluster.host(f"hv-{name}")
        write_qemu_tls_dir(bundle.ca_cert, bundle.cert, bundle.key, tls_dir)
        driver = MeasuredDriver(
            settings,
            hosts / name,
            hosts / f"state-{name}",
            migration_tls=MigrationTls(tls_dir, f"hv-{name}"),
        )
        driver.reports = reports
        driver.steps = steps
        drivers.append(driver)
    source, target = drivers
    drive = work / "drive-0.raw"
    make_drive(drive, build_tiny_guest())
    server = str(uuid.uuid4())
    run_as = source.host_settings(vnc_listen="127.0.0.1", netns=None).run_as
    spec = VmSpec(
        uuid=server, smp=1, mem_mb=MEM_MB, run_dir=source.run_dir(server), accelerator="tcg",
        disks=(DiskSpec("ide:0:0", drive),), boot=("ide:0:0",), run_as=run_as,
    )  # fmt: skip
    await source.start(StartRequest(spec, timeout=MOVE_TIMEOUT))
    try:
        await wait_for_log(spec.paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)
        figures = Figures([], [], [], [], [], [])
        for number in range(1, ROUNDS + 1):
            figures.copies.append(cp_seconds(drive, work / "copy.raw", sync=False))
            figures.synced.append(cp_seconds(drive, work / "copy.raw", sync=True))
            next_drive = work / f"drive-{number}.raw"
            request = moved(spec, target, next_drive)
            steps.append({})
            started, wall = time.perf_counter(), time.time()
            await live_migrate(source, target, request, MOVE_TIMEOUT)
            figures.moves.append(time.perf_counter() - started)
            steps[-1]["source ended"] = time.time()
            figures.steps.append({step: at - wall for step, at in steps[-1].items()})
            drive.unlink()
            spec, drive, source, target = request.start.spec, next_drive, target, source
        await source.stop(server)
        figures.downtimes = [float(str(report["downtime"])) for report in reports]
        for report in reports:
            ram = report["ram"]
            assert isinstance(ram, dict)
            figures.states.append((float(str(report["total-time"])), int(ram["transferred"])))
        return figures
    finally:
        for driver in drivers:
            for held in driver.held():
                await driver.kill(held)
            for unheld in await driver.unheld():
                await driver.stop_unheld(unheld)
            await driver.detach_all()


def kill_vms(hosts: Path) -> None:
    """Kill any VM a failed run left behind."""
    for run_dir in (hosts / "a", hosts / "b"):
        for server_dir in run_dir.iterdir() if run_dir.is_dir() else []:
            if (pid := process.adopt(server_dir, server_dir.name)) is not None:
                os.kill(pid, signal.SIGKILL)


def run() -> float:
    # Unix socket paths must stay short, and QEMU runs as another user: run directories
    # under /tmp that it can pass through; the drives on the disk of the work directory.
    hosts = Path(tempfile.mkdtemp(prefix="ohm-", dir="/tmp"))
    hosts.chmod(0o711)
    try:
        with work_directory("migration") as work:
            figures = asyncio.run(measure(work, hosts))
    finally:
        kill_vms(hosts)
        shutil.rmtree(hosts, ignore_errors=True)
    print(
        f"live migration of {MEM_MB} MiB + a {DRIVE_BYTES >> 20} MiB drive over TLS:"
        f" {', '.join(f'{t:.2f}' for t in figures.moves)} s, downtime"
        f" {', '.join(f'{d:.0f}' for d in figures.downtimes)} ms; of which the state"
        f" {', '.join(f'{t / 1000:.2f} s ({b / 1e6:.0f} MB)' for t, b in figures.states)};"
        f" cp {', '.join(f'{t:.2f}' for t in figures.copies)} s;"
        f" cp + sync {', '.join(f'{t:.2f}' for t in figures.synced)} s",
        flush=True,
    )
    print(
        "where a move's time goes (median s from its start): "
        + ", ".join(
            f"{step} {statistics.median(move[step] for move in figures.steps):.2f}"
            for step in STEPS
            if all(step in move for move in figures.steps)
        ),
        flush=True,
    )
    downtime = statistics.median(figures.downtimes)
    report("downtime (median)", downtime, "goal", DOWNTIME_GOAL_MS, "ms", "≤ 1")
    move = statistics.median(figures.moves)
    print(
        f"cp + sync of {DRIVE_BYTES >> 20} MiB (median): {statistics.median(figures.synced):.2f} s"
    )
    return report(
        "live migration, total (median)",
        move,
        f"cp of {DRIVE_BYTES >> 20} MiB",
        statistics.median(figures.copies),
        "s",
        "≤ 2",
    )
