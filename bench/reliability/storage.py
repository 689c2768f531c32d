"""The storage campaign: the drive directory on a tmpfs that really fills up (root only; a
device-mapper `error`/`flakey` target for EIO does not exist in this kernel, see
docs/reliability.md). Writes of known content, creates, grows and imaging run until the
space is gone and on past it. Invariants: every answer is a success or 507 `full` (imaging
ends with `imaging:error` naming the cause, never stuck), never another 5xx; once space is
freed by a destroy (which must work on a full disk) writes succeed again; every write
acknowledged before, during and after the fault reads back exactly."""

import os
import random
import subprocess
import time
from pathlib import Path

from bench.reliability import checkers
from bench.reliability.model import DriveModel, pattern
from bench.reliability.table import CampaignResult
from openhosting.wire.text import parse_properties
from testbed.daemon_process import Api, DaemonProcess, create_user

TMPFS_SIZE = 48 * 1024 * 1024
DRIVE_SIZE = 8 * 1024 * 1024
CHUNK = 1024 * 1024
IMAGING_WAIT = 20.0


def run(work_dir: Path, seed: int, rounds: int) -> CampaignResult:
    result = CampaignResult("storage")
    if os.geteuid() != 0:
        result.notes.append("skipped: mounting a tmpfs needs root")
        return result
    mount_point = work_dir / "drives"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                    str(mount_point)], check=True, timeout=30)  # fmt: skip
    daemon = None
    try:
        state = work_dir / "state"
        api = Api(create_user(state))
        daemon = DaemonProcess(state, work_dir / "daemon.log",
                               env={"OH_STORAGE_DRIVE_DIR": str(mount_point),
                                    "OH_HYPERVISOR_RUN_DIR": str(work_dir / "run")})  # fmt: skip
        api.url = daemon.url
        campaign = StorageCampaign(api, random.Random(seed), result)
        for _ in range(rounds):
            campaign.fill_then_free()
        campaign.check_all()
        result.violations += checkers.check_claims(
            checkers.read_claim_state(state / "openhosting.sqlite")
        )
        result.notes.append(
            f"{result.faults} refusals for space (507, imaging:error); {rounds} rounds"
        )
    finally:
        if daemon is not None:
            daemon.stop()
        subprocess.run(["umount", str(mount_point)], timeout=30, check=False)
    if daemon is not None:
        result.violations += checkers.check_integrity(state / "openhosting.sqlite")
    return result


def await_imaging_end(api: Api, drive: str, result: CampaignResult, cause: str) -> None:
    """Imaging into `drive` on a failing disk must end (done or `imaging:error`, counted as a
    fault met), never stay stuck: a violation after IMAGING_WAIT seconds."""
    deadline = time.monotonic() + IMAGING_WAIT
    while "imaging" in (info := api.properties(f"/drives/{drive}/info")):
        if time.monotonic() > deadline:
            result.violations.append(f"drive {drive}: imaging stuck at {info}")
            return
        time.sleep(0.2)
    if "imaging:error" in info:
        result.faults += 1
        result.notes.append(f"imaging on {cause}: {info['imaging:error']}")


class StorageCampaign:
    def __init__(self, api: Api, rng: random.Random, result: CampaignResult) -> None:
        self.api, self.rng, self.result = api, rng, result
        self.drives: dict[str, DriveModel] = {}
        self.seq = 0

    def answer(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        status, headers, answer = self.api.call(path, body)
        self.result.operations += 1
        if status == 507:
            self.result.faults += 1
            if headers.get("X-Elastic-Error") != "full":
                self.result.violations.append(f"{path}: 507 without X-Elastic-Error full")
        elif status >= 500:
            self.result.violations.append(f"{path}: {status} {answer[:200]!r}")
        return status, answer

    def create(self) -> str | None:
        cipher = self.rng.choice(["none", "aes-xts-plain"])
        body = f"size {DRIVE_SIZE}\nencryption:cipher {cipher}".encode()
        status, answer = self.answer("/drives/create", body)
        if status != 200:
            return None
        uuid = parse_properties(answer.decode())["drive"]
        self.drives[uuid] = DriveModel(uuid, DRIVE_SIZE)
        return uuid

    def write_whole(self, uuid: str) -> bool:
        """Fill a drive with known content; False once a write is refused for space."""
        drive = self.drives[uuid]
        for offset in range(0, drive.size, CHUNK):
            self.seq += 1
            data = pattern(uuid, offset, self.seq, min(CHUNK, drive.size - offset))
            status, _ = self.answer(f"/drives/{uuid}/write/{offset}", data)
            if status == 204:
                drive.acknowledged_write(offset, data)
            elif status == 507:
                return False  # refused before its first byte: the drive is unchanged
            else:
                drive.uncertain(offset, len(data))
        return True

    def image_into_new_drive(self) -> None:
        """Imaging on a full disk ends (done or `imaging:error`), never stuck."""
        if not self.drives:
            return
        source = self.rng.choice(sorted(self.drives))
        target = self.create()
        if target is None:
            return
        status, _ = self.answer(f"/drives/{target}/image/{source}", b"")
        if status == 204:
            self.drives[target].uncertain()
            await_imaging_end(self.api, target, self.result, "a full disk")

    def fill_then_free(self) -> None:
        while (uuid := self.create()) is not None and self.write_whole(uuid):
            pass
        self.image_into_new_drive()
        # Growing a drive is sparse and may succeed; it must never be a 500.
        if self.drives:
            grown = self.rng.choice(sorted(self.drives))
            status, _ = self.answer(f"/drives/{grown}/set", f"size {2 * DRIVE_SIZE}".encode())
            if status == 200:
                self.drives[grown].acknowledged_resize(2 * DRIVE_SIZE)
        self.check_all()
        # A destroy frees space on a full disk; then writes work again.
        for uuid in self.rng.sample(sorted(self.drives), min(3, len(self.drives))):
            status, _ = self.answer(f"/drives/{uuid}/destroy", b"")
            if status == 204:
                del self.drives[uuid]
            else:
                self.result.violations.append(f"drive {uuid}: destroy on a full disk: {status}")
        if (uuid := self.create()) is None or not self.write_whole(uuid):
            self.result.violations.append("no write succeeds after space was freed")

    def check_all(self) -> None:
        for uuid, drive in sorted(self.drives.items()):
            status, actual = self.answer(f"/drives/{uuid}/read")
            problems = drive.mismatches(actual) if status == 200 else [f"read {status}"]
            self.result.violations += problems
