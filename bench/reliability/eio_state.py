"""The eio campaign's state-disk round: the daemon's state directory (the SQLite database in
WAL mode, the platform key, the serial logs) on `faultfs` in page-cache mode, the drives on a
healthy disk. Invariants: while the database's disk fails, a change answers 2xx only if it is
stored (it is there after healing and after a restart) and otherwise 500 `failed` naming the
I/O error, never `system`; reads answer 200 while only writes fail (SQLite reads its file and
its own cache) and 200 or 500 `failed` once reads fail too; drive data on the healthy disk
stays readable and writable; once healed, the database passes `PRAGMA integrity_check`,
every acknowledged create, change and destroy is there, a refused create left no drive, and
creates work again, also after the daemon is restarted on the healed disk."""

import random
from pathlib import Path

from bench.reliability import checkers, faultfs
from bench.reliability.eio import CHUNK, DRIVE_SIZE, EioCampaign
from bench.reliability.table import CampaignResult
from openhosting.wire.text import parse_properties
from testbed.daemon_process import Api, DaemonProcess, create_user

DATABASE = "openhosting.sqlite"


def run_round(binary: Path, work_dir: Path, rng: random.Random, result: CampaignResult) -> None:
    """One round on a fresh daemon whose state directory is on a failing disk."""
    drives = work_dir / "state-round-drives"
    drives.mkdir()
    daemon = None
    with faultfs.FaultFs(
        binary, work_dir / "state-backing", work_dir / "state-disk", page_cache=True
    ) as faulty:
        state = faulty.mount_point
        try:
            api = Api(create_user(state))
            env = {
                "OH_STORAGE_DRIVE_DIR": str(drives),
                "OH_HYPERVISOR_RUN_DIR": str(work_dir / "run"),  # removed with the campaign's
            }
            daemon = DaemonProcess(state, work_dir / "state-round.log", env=env)
            api.url = daemon.url
            campaign = StateDiskCampaign(api, faulty, rng, result)
            faults_before = result.faults
            campaign.round()
            result.notes.append(
                f"state disk: {result.faults - faults_before} changes refused with 500 failed"
            )
            result.violations += checkers.check_integrity(state / DATABASE)
            # What was acknowledged is on the disk, not only in the daemon's memory.
            daemon.stop()
            daemon.start()
            campaign.check_after_healing("after a restart")
            result.violations += checkers.check_claims(checkers.read_claim_state(state / DATABASE))
        finally:
            faulty.set_mode("ok")
            if daemon is not None:
                daemon.stop()
        result.violations += checkers.check_integrity(state / DATABASE)


class StateDiskCampaign(EioCampaign):
    """EioCampaign's judging of answers, with the database's disk failing instead of the
    drives': drive data writes may be acknowledged during the fault (their disk is healthy)."""

    def __init__(
        self, api: Api, faulty: faultfs.FaultFs, rng: random.Random, result: CampaignResult
    ) -> None:
        super().__init__(api, faulty, rng, result)
        self.names: dict[str, str] = {}  # the acknowledged name of each drive
        self.destroyed: set[str] = set()

    def rename(self, uuid: str) -> None:
        self.seq += 1
        name = f"n{self.seq}"
        status, answer = self.answer(f"/drives/{uuid}/set", f"name {name}".encode())
        if status == 200:
            self.names[uuid] = parse_properties(answer.decode())["name"]

    def destroy(self, uuid: str) -> None:
        status, _ = self.answer(f"/drives/{uuid}/destroy", b"")
        if status == 204:
            del self.drives[uuid]
            self.names.pop(uuid, None)
            self.destroyed.add(uuid)

    def reads(self, must_answer: bool) -> int:
        """Lists and info; each must be 200 when `must_answer`, else 200 or 500 `failed`
        (judged by `answer`). How many answered 200."""
        served = 0
        uuid = self.rng.choice(sorted(self.drives))
        for path in ("/drives/list", "/drives/info", f"/drives/{uuid}/info", "/account/info"):
            status, answer = self.answer(path)
            served += status == 200
            if must_answer and status != 200:
                self.result.violations.append(
                    f"{path} while the database's disk refuses writes: {status} {answer[:200]!r}"
                )
        return served

    def changes(self) -> None:
        """A create, a rename and a destroy, each judged and, when acknowledged, recorded."""
        self.create(CHUNK)
        self.rename(self.rng.choice(sorted(self.drives)))
        if len(self.drives) > 2:
            self.destroy(self.rng.choice(sorted(self.drives)))

    def round(self) -> None:
        self.faulting, self.faulty_writes = False, False
        for _ in range(3):
            if (uuid := self.create(DRIVE_SIZE)) is not None:
                self.write_whole(uuid)
                self.rename(uuid)

        # The database's writes fail: changes answer 500 failed, reads and drive data work.
        self.faulty.set_mode("write")
        self.faulting = True
        for _ in range(3):
            self.changes()
        self.reads(must_answer=True)
        for uuid in self.rng.sample(sorted(self.drives), 2):
            self.write(uuid, self.rng.randrange(0, DRIVE_SIZE - 4096), 4096)

        # Its reads fail too: reads answer 200 (from SQLite's cache) or 500 failed.
        self.faulty.set_mode("all")
        self.changes()
        served = self.reads(must_answer=False)
        self.result.notes.append(f"state disk failing reads: {served} of 4 reads answered 200")

        self.faulty.set_mode("ok")
        self.faulting = False
        self.check_after_healing("once healed")
        if (uuid := self.create()) is None:
            self.result.violations.append("no drive can be created once the state disk heals")
        else:
            self.write_whole(uuid)

    def check_after_healing(self, when: str) -> None:
        status, answer = self.answer("/drives/list")
        listed = set(answer.decode().split()) if status == 200 else set()
        for uuid in sorted(set(self.drives) - listed):
            self.result.violations.append(f"{when}: acknowledged drive {uuid} is missing")
        for uuid in sorted(listed - set(self.drives)):
            what = "destroyed" if uuid in self.destroyed else "refused or unknown"
            self.result.violations.append(f"{when}: {what} drive {uuid} is listed")
        for uuid, name in sorted(self.names.items()):
            status, answer = self.answer(f"/drives/{uuid}/info")
            shown = parse_properties(answer.decode()).get("name") if status == 200 else None
            if shown != name:
                self.result.violations.append(
                    f"{when}: drive {uuid} is named {shown!r}, not {name!r}"
                )
        self.check_all()
