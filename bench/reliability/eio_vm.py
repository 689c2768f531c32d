"""The eio campaign's running-VM round: a tiny guest (QEMU under TCG) boots from a healthy
drive and writes to a data drive in a storage tier on `faultfs`. Invariants: while the disk
fails, the guest's write fails as a failing disk's (its kernel names the I/O error, its `dd`
does not succeed, the daemon's log names it), the server stays `active` (QEMU reports EIO to
the guest and pauses only for ENOSPC: the defaults of QEMU and libvirt) and the API answers
as usual; once the disk heals, the guest's next write succeeds and the drive holds it."""

import random
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from bench.reliability import faultfs
from bench.reliability.eio import EioCampaign
from bench.reliability.table import CampaignResult
from testbed.build_guest import READY_MARKER, build_tiny_guest
from testbed.console_guest import wait_for_serial
from testbed.daemon_process import Api, DaemonProcess, create_user
from testbed.leftovers import kill_leftover_vms
from testbed.serial_console import read_serial_log

MIB = 1 << 20
DATA_SIZE = 8 * MIB
WRITTEN = MIB
LINE = b"OHHEAL\n"
GUEST_WRITE = f"yes OHHEAL | head -c {WRITTEN} | dd of=/dev/vda bs=65536 conv=fsync 2>/dev/null"
GUEST_TIMEOUT = 60.0  # a 1 MiB write under TCG on a shared machine
TIER = "failing"


def run_round(binary: Path, work_dir: Path, rng: random.Random, result: CampaignResult) -> None:
    """One guest on a fresh daemon whose tier `failing` is on a failing disk."""
    # Short: QEMU's unix socket paths must fit in 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="ohe-", dir="/tmp"))
    run_dir.chmod(0o755)
    daemon = None
    with faultfs.FaultFs(binary, work_dir / "vm-backing", work_dir / "vm-disk") as faulty:
        try:
            api = Api(create_user(work_dir / "vm-state"))
            env = {
                "OH_STORAGE_TIERS": f"{TIER}={faulty.mount_point}",
                "OH_HYPERVISOR_RUN_DIR": str(run_dir),
                "OH_HYPERVISOR_ACCELERATOR": "tcg",
            }
            daemon = DaemonProcess(work_dir / "vm-state", work_dir / "vm-round.log", env=env)
            api.url = daemon.url
            violations = len(result.violations)
            GuestRound(EioCampaign(api, faulty, rng, result), run_dir).run()
            if "event=vm_io_error" not in (work_dir / "vm-round.log").read_text(errors="replace"):
                result.violations.append("the daemon's log does not name the guest's I/O error")
            if len(result.violations) == violations:
                result.notes.append(
                    "running VM: the guest's write failed under EIO, server active, the log"
                    " named it; after healing the guest's write reached its drive"
                )
        finally:
            faulty.set_mode("ok")
            if daemon is not None:
                daemon.stop()
            kill_leftover_vms(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


class GuestRound:
    """The guest's writes before and after healing; `campaign` judges the API's answers."""

    def __init__(self, campaign: EioCampaign, run_dir: Path) -> None:
        self.campaign, self.run_dir = campaign, run_dir
        self.api, self.faulty, self.result = campaign.api, campaign.faulty, campaign.result
        self.server = ""
        self.sent = 0

    def guest_runs(self, line: str) -> str:
        """Type `line; echo <mark>-$?-END` on the guest's serial shell; its exit status."""
        self.sent += 1
        # Quotes split the mark in the typed line's echo: only the output has it whole.
        done = re.compile(rf"R{self.sent}-(\d+)-END")
        log = self.run_dir / self.server / "serial.log"
        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(10)
            console.connect(str(self.run_dir / self.server / "console.sock"))
            console.sendall(f'{line}; echo R{self.sent}-$?-"E"ND\n'.encode())
        deadline = time.monotonic() + GUEST_TIMEOUT
        while (found := done.search(read_serial_log(log))) is None:
            assert time.monotonic() < deadline, f"the guest did not answer {line!r}"
            time.sleep(0.2)
        return found.group(1)

    def run(self) -> None:
        image = build_tiny_guest().read_bytes()
        boot = self.api.properties(
            "/drives/create", f"name boot\nsize {len(image)}\nencryption:cipher none".encode()
        )["drive"]
        status, _, answer = self.api.call(f"/drives/{boot}/write", image)
        assert status == 204, answer
        data = self.api.properties(
            "/drives/create", f"name data\nsize {DATA_SIZE}\ntier {TIER}".encode()
        )["drive"]
        self.server = self.api.properties(
            "/servers/create",
            f"name eio\ncpu 2000\nmem 256\npersistent true\nide:0:0 {boot}\nboot ide:0:0\n"
            f"block:0 {data}".encode(),
        )["server"]
        wait_for_serial(self.run_dir / self.server / "serial.log", READY_MARKER)

        self.campaign.faulting = True
        self.faulty.set_mode("write")
        if self.guest_runs(GUEST_WRITE) == "0":
            self.result.violations.append("the guest's write succeeded on a failing disk")
        else:
            self.result.faults += 1
        self.campaign.still_serving()
        status, answer = self.campaign.answer(f"/servers/{self.server}/info")
        if status != 200 or b"status active" not in answer:
            self.result.violations.append(f"server under EIO: {status} {answer[:300]!r}")

        self.faulty.set_mode("ok")
        self.campaign.faulting = False
        if (code := self.guest_runs(GUEST_WRITE)) != "0":
            self.result.violations.append(f"the guest's write after healing exited {code}")
        status, _ = self.campaign.answer(f"/servers/{self.server}/stop", b"")
        if status != 204:
            self.result.violations.append(f"stop after healing: {status}")
        status, stored = self.campaign.answer(f"/drives/{data}/read/0/{WRITTEN}")
        expected = (LINE * (WRITTEN // len(LINE) + 1))[:WRITTEN]
        if status != 200 or stored != expected:
            self.result.violations.append("the guest's write after healing is not on its drive")
        self.campaign.answer(f"/servers/{self.server}/destroy", b"")
