"""The EIO campaign: the drive directory on `faultfs` (a FUSE passthrough, see faultfs.py)
whose data I/O fails with EIO on demand: first writes, syncs, allocations and creates, then
reads and opens too, then healed. Invariants: while the fault lasts, a request that touches
the failing data answers 500 `failed` naming the I/O error (or 507 `full`), never another
5xx and never a 204 for a write that did not reach the disk; what does not touch it (lists,
info, account) keeps answering 200; imaging ends (`imaging:error`), never stuck; once healed,
every write acknowledged before and during the fault reads back exactly, writes and creates
work again, no claim or imaging mark is stranded and the database passes integrity_check."""

import random
from pathlib import Path

from bench.reliability import checkers, faultfs
from bench.reliability.model import DriveModel, pattern
from bench.reliability.storage import await_imaging_end
from bench.reliability.table import CampaignResult
from openhosting.wire.text import parse_properties
from testbed.daemon_process import Api, DaemonProcess, create_user

DRIVE_SIZE = 4 * 1024 * 1024
CHUNK = 1024 * 1024
# How an I/O error is named in a 500's body (strerror of EIO).
EIO_TEXT = "Input/output error"


def run(work_dir: Path, seed: int, rounds: int) -> CampaignResult:
    result = CampaignResult("eio")
    reason = faultfs.unavailable_reason()
    if reason is not None:
        result.notes.append(f"skipped: {reason}")
        return result
    binary = faultfs.build(work_dir)
    state = work_dir / "state"
    daemon = None
    with faultfs.FaultFs(binary, work_dir / "backing", work_dir / "drives") as faulty:
        try:
            api = Api(create_user(state))
            env = {
                "OH_STORAGE_DRIVE_DIR": str(faulty.mount_point),
                "OH_HYPERVISOR_RUN_DIR": str(work_dir / "run"),  # removed with the campaign's
            }
            daemon = DaemonProcess(state, work_dir / "daemon.log", env=env)
            api.url = daemon.url
            campaign = EioCampaign(api, faulty, random.Random(seed), result)
            for _ in range(rounds):
                campaign.round()
            # The state directory's and the running VM's rounds build on EioCampaign.
            from bench.reliability import eio_state, eio_vm

            eio_state.run_round(binary, work_dir, campaign.rng, result)
            eio_vm.run_round(binary, work_dir, campaign.rng, result)
            result.violations += checkers.check_claims(
                checkers.read_claim_state(state / "openhosting.sqlite")
            )
            result.notes.append(
                f"{result.faults} requests met EIO (500 failed or imaging:error); {rounds} rounds"
            )
        finally:
            faulty.set_mode("ok")
            if daemon is not None:
                daemon.stop()
    if daemon is not None:
        result.violations += checkers.check_integrity(state / "openhosting.sqlite")
    return result


class EioCampaign:
    def __init__(
        self, api: Api, faulty: faultfs.FaultFs, rng: random.Random, result: CampaignResult
    ) -> None:
        self.api, self.faulty, self.rng, self.result = api, faulty, rng, result
        self.drives: dict[str, DriveModel] = {}
        self.seq = 0
        self.faulting = False  # a 5xx may be the fault's
        self.faulty_writes = False  # a 204 for a write would be a lie

    def answer(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request, its answer judged: a 5xx only while faulting, and then only 500
        `failed` naming the I/O error or 507 `full`."""
        status, headers, answer = self.api.call(path, body)
        self.result.operations += 1
        if status < 500:
            return status, answer
        error = headers.get("X-Elastic-Error")
        if not self.faulting:
            self.result.violations.append(f"{path}: {status} {error} with no fault: {answer!r}")
        elif (status, error) == (507, "full") or (
            (status, error) == (500, "failed") and EIO_TEXT in answer.decode(errors="replace")
        ):
            self.result.faults += 1
        else:
            self.result.violations.append(f"{path}: {status} {error} {answer[:200]!r}")
        return status, answer

    def create(self, size: int = DRIVE_SIZE) -> str | None:
        cipher = self.rng.choice(["none", "aes-xts-plain"])
        body = f"size {size}\nencryption:cipher {cipher}".encode()
        status, answer = self.answer("/drives/create", body)
        if status != 200:
            return None
        uuid = parse_properties(answer.decode())["drive"]
        self.drives[uuid] = DriveModel(uuid, size)
        return uuid

    def write(self, uuid: str, offset: int, length: int) -> int:
        drive = self.drives[uuid]
        self.seq += 1
        data = pattern(uuid, offset, self.seq, length)
        status, _ = self.answer(f"/drives/{uuid}/write/{offset}", data)
        if status == 204:
            drive.acknowledged_write(offset, data)
            if self.faulting and self.faulty_writes:
                self.result.violations.append(
                    f"drive {uuid}: write at {offset} acknowledged while writes fail"
                )
        else:
            drive.uncertain(offset, length)  # EIO leaves the range in an unknown state
        return status

    def write_whole(self, uuid: str) -> None:
        for offset in range(0, self.drives[uuid].size, CHUNK):
            self.write(uuid, offset, CHUNK)

    def still_serving(self) -> None:
        """What does not touch drive data answers as usual during the fault."""
        for path in ("/drives/list", "/drives/info", "/servers/list", "/account/info"):
            status, answer = self.answer(path)
            if status != 200:
                self.result.violations.append(f"{path} during EIO: {status} {answer[:200]!r}")

    def image_into(self, target: str) -> None:
        """Imaging on a failing disk ends (done or `imaging:error`), never stuck."""
        source = self.rng.choice(sorted(set(self.drives) - {target}))
        status, _ = self.answer(f"/drives/{target}/image/{source}", b"")
        if status == 204:
            self.drives[target].uncertain()
            await_imaging_end(self.api, target, self.result, "a failing disk")

    def round(self) -> None:
        self.faulting, self.faulty_writes = False, False
        for _ in range(2):
            if (uuid := self.create()) is not None:
                self.write_whole(uuid)
        imaging_target = self.create()  # made while writes work: imaging into it fails
        self.check_all()

        # Writes fail: writes, a create, a grow and imaging meet EIO; nothing else breaks.
        self.faulty.set_mode("write")
        self.faulting, self.faulty_writes = True, True
        for uuid in self.rng.sample(sorted(self.drives), min(3, len(self.drives))):
            offset = self.rng.randrange(0, DRIVE_SIZE - 4096)
            self.write(uuid, offset, self.rng.choice([512, 4096, 65536]))
        self.create()
        grown = self.rng.choice(sorted(self.drives))
        status, _ = self.answer(f"/drives/{grown}/set", f"size {2 * DRIVE_SIZE}".encode())
        if status == 200:
            self.drives[grown].acknowledged_resize(2 * DRIVE_SIZE)
        if imaging_target is not None:
            self.image_into(imaging_target)
        self.still_serving()

        # Reads fail too: a read answers 500 failed, lists and info still answer.
        self.faulty.set_mode("all")
        for uuid in self.rng.sample(sorted(self.drives), min(2, len(self.drives))):
            status, _ = self.answer(f"/drives/{uuid}/read/0/4096")
            if status == 200:
                self.result.violations.append(f"drive {uuid}: a read answered 200 under EIO")
        self.still_serving()

        # Healed: everything acknowledged is there, and writing works again.
        self.faulty.set_mode("ok")
        self.faulting, self.faulty_writes = False, False
        self.check_all()
        if (uuid := self.create()) is None:
            self.result.violations.append("no drive can be created once the fault is cleared")
        else:
            self.write_whole(uuid)
            self.check_all()

    def check_all(self) -> None:
        for uuid, drive in sorted(self.drives.items()):
            status, actual = self.answer(f"/drives/{uuid}/read")
            problems = drive.mismatches(actual) if status == 200 else [f"read {status}"]
            self.result.violations += problems
