"""The crash campaign: a mixed workload on a real daemon (drive writes of known content,
creates, resizes, imaging, destroys, servers, an IP resource, a running VM, key rotation)
while the daemon, the VM's QEMU, or the admin tool in the middle of `standard add` or
`backup`, is SIGKILLed at seeded random moments. After each kill
the daemon is started again and the checkers of checkers.py prove that nothing acknowledged
was lost, nothing destroyed came back, no claim or imaging mark is stranded, every running VM
is adopted once, and the database passes `PRAGMA integrity_check`."""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.reliability import checkers
from bench.reliability.model import DriveModel, pattern
from bench.reliability.table import CampaignResult
from openhosting.wire.text import parse_properties
from testbed.daemon_process import BIN, Account, Api, DaemonProcess, create_user

DRIVE_SIZE = 256 * 1024
WORKERS = 2
STANDARD_IMAGE_SIZE = 8 * 1024 * 1024
VM_CONFIG = b"name vm\ncpu 500\nmem 128\npersistent true"
# How long a killed QEMU's server may take to leave `active` (the daemon sees the exit).
VM_EXIT_WAIT = 10.0


class Lost(Exception):
    """A request whose answer never came: it may or may not have taken effect."""


class Worker:
    """One client thread's share of the workload: its own drives (so that the order of the
    writes to a drive is the order of their acknowledgements) and its own servers."""

    def __init__(self, campaign: "CrashCampaign", index: int) -> None:
        self.campaign, self.index = campaign, index
        self.rng = random.Random(campaign.seed * 1000 + index)
        self.drives: dict[str, DriveModel] = {}
        self.resizing: set[str] = set()  # resizes whose answer was lost
        self.servers: list[str] = []
        self.seq = 0

    def call(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            status, _, answer = self.campaign.api.call(path, body)
        except ConnectionRefusedError:
            return 0, b""  # never reached a daemon: nothing happened
        except OSError as error:  # reset, timeout, remote closed: outcome unknown
            raise Lost(str(error)) from error
        if status >= 500:
            self.campaign.violations.append(f"{path}: {status} {answer[:200]!r}")
            raise Lost(f"{status}")
        return status, answer

    def step(self) -> None:
        actions: list[tuple[int, Callable[[], None]]] = [
            (40, self.write), (6, self.create_drive), (3, self.destroy_drive),
            (5, self.resize), (4, self.image), (4, self.create_server),
            (3, self.set_server), (2, self.destroy_server), (2, self.resource),
        ]  # fmt: skip
        if self.index == 0:
            actions += [(3, self.vm)]
        weights = [weight for weight, _ in actions]
        self.rng.choices([action for _, action in actions], weights)[0]()
        self.campaign.operations += 1

    def pick_drive(self) -> DriveModel | None:
        return self.drives[self.rng.choice(sorted(self.drives))] if self.drives else None

    def write(self) -> None:
        drive = self.pick_drive()
        if drive is None or drive.size == 0:
            return self.create_drive()
        offset = self.rng.randrange(drive.size)
        if self.rng.random() < 0.5:
            offset -= offset % 512
        length = min(self.rng.randint(1, 64 * 1024), drive.size - offset)
        self.seq += 1
        data = pattern(drive.uuid, offset, self.seq, length)
        try:
            status, _ = self.call(f"/drives/{drive.uuid}/write/{offset}", data)
        except Lost:
            drive.uncertain(offset, length)
            return
        if status == 204:
            drive.acknowledged_write(offset, data)

    def create_drive(self) -> None:
        cipher = self.rng.choice(["none", "aes-xts-plain"])
        body = f"name w{self.index}\nsize {DRIVE_SIZE}\nencryption:cipher {cipher}".encode()
        try:
            status, answer = self.call("/drives/create", body)
        except Lost:
            self.campaign.unanswered_creates["drive"] += 1
            return
        if status == 200:
            uuid = parse_properties(answer.decode())["drive"]
            self.drives[uuid] = DriveModel(uuid, DRIVE_SIZE)
            self.campaign.ledgers["drive"].created(uuid)

    def destroy_drive(self) -> None:
        drive = self.pick_drive()
        if drive is None:
            return
        try:
            status, _ = self.call(f"/drives/{drive.uuid}/destroy", b"")
        except Lost:
            self.campaign.ledgers["drive"].doubt(drive.uuid)
            return
        if status == 204:
            self.campaign.ledgers["drive"].destroyed(drive.uuid)
            del self.drives[drive.uuid]

    def resize(self) -> None:
        drive = self.pick_drive()
        if drive is None:
            return
        size = self.rng.randrange(64, 512) * 1024 + self.rng.choice([0, 0, 1, 511])
        try:
            status, _ = self.call(f"/drives/{drive.uuid}/set", f"size {size}".encode())
        except Lost:
            self.resizing.add(drive.uuid)
            return
        if status == 200:
            drive.acknowledged_resize(size)

    def image(self) -> None:
        if len(self.drives) < 2:
            return self.create_drive()
        dst, src = self.rng.sample(sorted(self.drives), 2)
        try:
            status, _ = self.call(f"/drives/{dst}/image/{src}", b"")
        except Lost:
            status = 204
        if status == 204:
            # What the copy leaves depends on its timing against later writes: the checker
            # forgets the destination's bytes; writes acknowledged after it are known again.
            self.drives[dst].uncertain()

    def create_server(self) -> None:
        body = f"name s{self.index}\ncpu 1000\nmem 256".encode()
        try:
            status, answer = self.call("/servers/create/stopped", body)
        except Lost:
            self.campaign.unanswered_creates["server"] += 1
            return
        if status == 200:
            uuid = parse_properties(answer.decode())["server"]
            self.servers.append(uuid)
            self.campaign.ledgers["server"].created(uuid)

    def set_server(self) -> None:
        if not self.servers:
            return self.create_server()
        server = self.rng.choice(self.servers)
        body = f"name s{self.seq}\ncpu {self.rng.choice([500, 1000, 2000])}".encode()
        self.seq += 1
        with contextlib.suppress(Lost):
            self.call(f"/servers/{server}/set", body)

    def destroy_server(self) -> None:
        if not self.servers:
            return
        server = self.rng.choice(self.servers)
        try:
            status, _ = self.call(f"/servers/{server}/destroy", b"")
        except Lost:
            self.campaign.ledgers["server"].doubt(server)
            return
        if status == 204:
            self.campaign.ledgers["server"].destroyed(server)
            self.servers.remove(server)

    def resource(self) -> None:
        ledger = self.campaign.ledgers["resource"]
        mine = sorted(ledger.present)
        if mine and self.rng.random() < 0.5:
            address = self.rng.choice(mine)
            try:
                status, _ = self.call(f"/resources/ip/{address}/destroy", b"")
            except Lost:
                ledger.doubt(address)
                return
            if status == 204:
                ledger.destroyed(address)
            return
        try:
            status, answer = self.call("/resources/ip/create", b"")
        except Lost:
            self.campaign.unanswered_creates["resource"] += 1
            return
        if status == 200:
            ledger.created(parse_properties(answer.decode())["resource"])

    def vm(self) -> None:
        """Start the one VM of the campaign, or stop it (one QEMU at a time on this host)."""
        campaign = self.campaign
        if campaign.vm is None:
            try:
                status, answer = self.call("/servers/create/stopped", VM_CONFIG)
            except Lost:
                campaign.unanswered_creates["server"] += 1
                return
            if status != 200:
                return
            campaign.vm = parse_properties(answer.decode())["server"]
            campaign.ledgers["server"].created(campaign.vm)
        command = "stop" if campaign.vm_started else "start"
        try:
            status, _ = self.call(f"/servers/{campaign.vm}/{command}", b"")
        except Lost:
            return
        if status == 204:
            campaign.vm_started = command == "start"


class CrashCampaign:
    """The daemon, the workers, the kills and the checks; `run` gives the figures."""

    def __init__(self, work_dir: Path, seed: int, seconds: float) -> None:
        self.work_dir, self.seed, self.seconds = work_dir, seed, seconds
        self.rng = random.Random(seed)
        self.state_dir = work_dir / "state"
        self.account = create_user(self.state_dir)
        # Short: QEMU's unix socket paths must fit in 108 bytes. QEMU may run as another user.
        self.run_dir = Path(tempfile.mkdtemp(prefix="ohr-", dir="/tmp"))
        self.run_dir.chmod(0o755)
        env = {"OH_HYPERVISOR_RUN_DIR": str(self.run_dir), "OH_HYPERVISOR_ACCELERATOR": "tcg"}
        self.daemon = DaemonProcess(self.state_dir, work_dir / "daemon.log", env=env)
        self.api = Api(self.account, self.daemon.url, timeout=30)
        # IP addresses come back from the pool; drive and server UUIDs never do.
        self.ledgers = {kind: checkers.Ledger.empty(kind, reuses_ids=kind == "resource")
                        for kind in ("drive", "server", "resource")}  # fmt: skip
        self.unanswered_creates = {kind: 0 for kind in self.ledgers}
        self.violations: list[str] = []
        self.operations = self.faults = 0
        self.vm: str | None = None
        self.vm_started = False
        self.workers = [Worker(self, index) for index in range(WORKERS)]
        self.admin_runs = 0
        self.fault_kinds: dict[str, int] = {}
        # A standard image big enough that `standard add` can be caught in the middle.
        self.standard_image = work_dir / "standard.img"
        self.standard_image.write_bytes(pattern("standard", 0, 0, STANDARD_IMAGE_SIZE))
        self.running = threading.Event()  # set while workers may send requests
        self.idle = [threading.Event() for _ in self.workers]
        self.stopping = False

    def work(self, worker: Worker) -> None:
        idle = self.idle[worker.index]
        while not self.stopping:
            if not self.running.is_set():
                idle.set()
                self.running.wait(0.2)
                continue
            idle.clear()
            if self.running.is_set():
                with contextlib.suppress(Lost):
                    worker.step()
        idle.set()

    def pause_workers(self) -> None:
        self.running.clear()
        for idle in self.idle:
            idle.wait(60)

    def run(self) -> CampaignResult:
        threads = [threading.Thread(target=self.work, args=(w,), daemon=True)
                   for w in self.workers]  # fmt: skip
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline:
                self.running.set()
                time.sleep(self.rng.uniform(0.3, 2.5))
                self.fault_and_check()
            self.pause_workers()
        finally:
            self.stopping = True
            self.running.set()
            for thread in threads:
                thread.join(60)
            self.clean_up()
        self.violations += checkers.check_integrity(self.state_dir / "openhosting.sqlite")
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.fault_kinds.items()))
        return CampaignResult("crash", self.operations, self.faults, self.violations, [kinds])

    def fault_and_check(self) -> None:
        """One fault, then the check. A daemon that stops answering meanwhile (a restart
        does not count: the workers are paused) fails the campaign, saying what became of
        its process."""
        try:
            self.inject_fault()
            self.check()
        except ConnectionError as error:
            fate = checkers.process_fate(self.daemon.process)
            raise RuntimeError(
                f"the daemon stopped answering ({error!r}); its process {fate}"
            ) from error

    def inject_fault(self) -> None:
        """SIGKILL the daemon mid-work (mostly), or the VM's QEMU, or rotate the key."""
        roll = self.rng.random()
        if roll < 0.15 and self.vm_started and self.vm is not None:
            pids = checkers.qemu_processes([self.vm]).get(self.vm, [])
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.count_fault("SIGKILL qemu")
                self.pause_workers()
                self.wait_vm_exit(self.vm)
                return
        if roll < 0.25:
            self.pause_workers()
            self.rotate_key()
            return
        if roll < 0.35:
            self.pause_workers()
            self.kill_admin()
            return
        self.daemon.end(signal.SIGKILL)
        self.count_fault("SIGKILL openhostingd")
        self.pause_workers()
        self.violations += checkers.check_integrity(self.state_dir / "openhosting.sqlite")
        self.daemon.start()

    def count_fault(self, kind: str) -> None:
        self.faults += 1
        self.fault_kinds[kind] = self.fault_kinds.get(kind, 0) + 1

    def rotate_key(self) -> None:
        """`openhosting-admin user rotate-key` while the daemon runs: the new key works at
        once and the old one no longer does."""
        old = self.account
        printed = subprocess.run(
            [str(BIN / "openhosting-admin"), "--state-dir", str(self.state_dir),
             "user", "rotate-key", old.user],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        fields = dict(line.split(" ", 1) for line in printed.splitlines() if " " in line)
        self.account = Account(old.user, fields["secret"])
        self.api.account = self.account
        if Api(old, self.daemon.url).call("/drives/list").status != 401:
            self.violations.append("rotate-key: the old key still opens the account")
        self.operations += 1

    def kill_admin(self) -> None:
        """SIGKILL `openhosting-admin standard add` or `backup` at a random moment: a
        standard drive is listed only whole, a finished backup passes integrity_check, and
        the daemon's database is checked at the next kill like every other time."""
        self.admin_runs += 1
        if self.rng.random() < 0.5:
            name = f"std-{self.admin_runs}"
            command = ["standard", "add", "--name", name, str(self.standard_image)]
        else:
            target = self.work_dir / f"backup-{self.admin_runs}"
            command = ["backup", str(target)]
        admin = subprocess.Popen(
            [str(BIN / "openhosting-admin"), "--state-dir", str(self.state_dir), *command],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(self.rng.uniform(0.0, 0.6))
        if admin.poll() is None:
            admin.kill()
            self.count_fault(f"SIGKILL admin {command[0]}")
        finished = admin.wait(60) == 0
        self.operations += 1
        if command[0] == "standard":
            self.check_standard_drives(name if finished else None)
        elif finished:
            self.violations += checkers.check_integrity(target / "openhosting.sqlite")

    def check_standard_drives(self, acknowledged: str | None) -> None:
        expected = self.standard_image.read_bytes()
        status, _, answer = self.api.call("/drives/info/standard")
        if status != 200:
            self.violations.append(f"/drives/info/standard: {status}")
            return
        listed = {}
        for block in answer.decode().split("\n\n"):
            info = parse_properties(block)
            if info.get("name", "").startswith("std-"):
                listed[info["name"]] = info["drive"]
        if acknowledged is not None and acknowledged not in listed:
            self.violations.append(f"standard drive {acknowledged}: added, not listed")
        for name, drive in sorted(listed.items()):
            status, _, actual = self.api.call(f"/drives/{drive}/read")
            if status != 200 or actual != expected:
                self.violations.append(
                    f"standard drive {name}: listed, reads {status} {len(actual)} bytes"
                    " that are not its image"
                )

    def wait_vm_exit(self, server: str) -> None:
        deadline = time.monotonic() + VM_EXIT_WAIT
        while time.monotonic() < deadline:
            status = self.server_status(server)
            if status not in ("active", None):
                self.vm_started = False
                return
            time.sleep(0.2)
        self.violations.append(
            f"server {server}: still active {VM_EXIT_WAIT} s after its QEMU died"
        )

    def server_status(self, server: str) -> str | None:
        status, _, answer = self.api.call(f"/servers/{server}/info")
        return parse_properties(answer.decode()).get("status") if status == 200 else None

    def listed(self, path: str, column: int = 0) -> set[str]:
        status, _, answer = self.api.call(path)
        assert status == 200, f"{path}: {status} {answer!r}"
        return {line.split()[column] for line in answer.decode().splitlines() if line.strip()}

    def check(self) -> None:
        """With the workers paused: every invariant against the acknowledged history, then
        what was in doubt is settled by what the platform shows."""
        problems: list[str] = []
        if self.api.call("/drives/list").status != 200:
            problems.append("the current key does not open the account after restart")
        observed = {
            "drive": self.listed("/drives/list"),
            "server": self.listed("/servers/list"),
            "resource": self.listed("/resources/ip/list", column=1),
        }
        for kind, ledger in self.ledgers.items():
            problems += checkers.check_presence(
                ledger, observed[kind], self.unanswered_creates[kind]
            )
            ledger.settle(observed[kind], self.unanswered_creates[kind])
            self.unanswered_creates[kind] = 0
        known = {uuid for worker in self.workers for uuid in worker.drives}
        for uuid in sorted(observed["drive"] - known):  # a create whose answer was lost
            info = self.api.properties(f"/drives/{uuid}/info")
            adopted = DriveModel(uuid, int(info["size"]))
            adopted.uncertain()
            self.workers[0].drives[uuid] = adopted
            self.ledgers["drive"].created(uuid)
        for worker in self.workers:
            for uuid in [u for u in worker.drives if u not in observed["drive"]]:
                del worker.drives[uuid]
            for uuid, drive in worker.drives.items():
                problems += self.check_drive(worker, uuid, drive)
            worker.servers = [s for s in worker.servers if s in observed["server"]]
        state = checkers.read_claim_state(self.state_dir / "openhosting.sqlite")
        problems += checkers.check_claims(state)
        servers = self.ledgers["server"].present | self.ledgers["server"].absent
        active = {s for s in observed["server"] if self.server_status(s) == "active"}
        problems += checkers.check_adoption(active, checkers.qemu_processes(servers))
        if self.vm is not None:
            self.vm_started = self.vm in active
            if self.vm not in observed["server"]:
                self.vm, self.vm_started = None, False
        self.violations += problems

    def check_drive(self, worker: Worker, uuid: str, drive: DriveModel) -> list[str]:
        size = int(self.api.properties(f"/drives/{uuid}/info")["size"])
        if uuid in worker.resizing:
            drive.adopt_size(size)
            worker.resizing.discard(uuid)
        status, _, actual = self.api.call(f"/drives/{uuid}/read/0/{max(size, 1)}")
        if status != 200:
            return [f"drive {uuid}: read {status} {actual[:200]!r}"]
        return drive.mismatches(actual[:size])

    def clean_up(self) -> None:
        """Destroy the campaign's servers (their QEMU goes with them), stop the daemon, and
        kill any QEMU of ours that is left (counted as a violation: an orphan)."""
        try:
            for server in self.listed("/servers/list"):
                self.api.call(f"/servers/{server}/destroy", b"")
        except (OSError, AssertionError) as error:
            self.violations.append(f"clean-up: {error}")
        self.daemon.stop()
        servers = self.ledgers["server"].present | self.ledgers["server"].absent
        servers |= {self.vm} if self.vm else set()
        for server, pids in checkers.qemu_processes(servers).items():
            self.violations.append(f"server {server}: QEMU {pids} left after destroy and stop")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def run(work_dir: Path, seed: int, seconds: float) -> CampaignResult:
    return CrashCampaign(work_dir, seed, seconds).run()
