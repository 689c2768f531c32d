"""The invariants checked after a fault, each a function of what was acknowledged and what is
observed, so that a unit test can feed it a tampered history or state and see it object.
Each returns the violations it found, in words (empty: the invariant holds)."""

import signal
import sqlite3
import subprocess
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PENDING_JOB_STATES = ("queued", "running")
# How long a daemon that stopped answering is given to be seen gone: a killed process closes
# its sockets (connections are refused) before its parent can reap it.
EXIT_WAIT = 5.0


@dataclass
class Ledger:
    """Which objects of one kind were acknowledged as created or destroyed, and which
    requests lost their answer (the object may or may not exist)."""

    kind: str
    present: set[str]
    absent: set[str]
    in_doubt: set[str]
    # Whether the platform hands a destroyed object's identifier out again (IP addresses,
    # from a pool): then a create that lost its answer may explain a destroyed one back.
    reuses_ids: bool = False

    @classmethod
    def empty(cls, kind: str, reuses_ids: bool = False) -> "Ledger":
        return cls(kind, set(), set(), set(), reuses_ids)

    def unexplained(self, observed: Collection[str]) -> set[str]:
        """What is observed and no acknowledged create explains: a lost create may."""
        known = self.present | (set() if self.reuses_ids else self.absent)
        return set(observed) - known

    def created(self, uuid: str) -> None:
        self.present.add(uuid)
        self.absent.discard(uuid)
        self.in_doubt.discard(uuid)

    def destroyed(self, uuid: str) -> None:
        self.absent.add(uuid)
        self.present.discard(uuid)
        self.in_doubt.discard(uuid)

    def doubt(self, uuid: str) -> None:
        self.in_doubt.add(uuid)

    def settle(self, observed: Collection[str], unanswered_creates: int = 0) -> None:
        """After a check: what was in doubt is now what the platform shows, and objects that
        creates which lost their answer explain are now known (else every later check would
        count them as unexplained again)."""
        for uuid in list(self.in_doubt):
            (self.created if uuid in observed else self.destroyed)(uuid)
        unknown = self.unexplained(observed)
        if len(unknown) <= unanswered_creates:
            for uuid in unknown:
                self.created(uuid)


def check_presence(
    ledger: Ledger, observed: Collection[str], unanswered_creates: int = 0
) -> list[str]:
    """Acknowledged creates are there, acknowledged destroys are not; objects nobody
    acknowledged are allowed only as many as creates lost their answer."""
    problems = [f"{ledger.kind} {u}: acknowledged created, missing" for u in
                sorted(ledger.present - ledger.in_doubt - set(observed))]  # fmt: skip
    unknown = ledger.unexplained(observed) - ledger.in_doubt
    problems += [f"{ledger.kind} {u}: acknowledged destroyed, back" for u in
                 sorted(ledger.absent & set(observed) - unknown)]  # fmt: skip
    if len(unknown) > unanswered_creates:
        problems.append(
            f"{ledger.kind}: {len(unknown)} unacknowledged objects appeared"
            f" ({unanswered_creates} creates lost their answer): {sorted(unknown)}"
        )
    return problems


@dataclass(frozen=True)
class ClaimState:
    """What the database says of drives, claims, jobs and servers (one read transaction)."""

    imaging_drives: Mapping[str, str]  # drive → its `imaging` column
    claims: list[tuple[str, str, str]]  # (drive, kind, holder)
    pending_jobs: Mapping[str, str]  # job id → destination drive
    active_servers: set[str]


def read_claim_state(database: Path) -> ClaimState:
    """Read the state directory's SQLite file read-only (a running daemon is not disturbed:
    the database is in WAL mode)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        with connection:
            imaging = dict(connection.execute(
                "SELECT uuid, imaging FROM drives WHERE imaging IS NOT NULL"
            ).fetchall())  # fmt: skip
            claims = [tuple(row) for row in connection.execute(
                "SELECT drive, kind, holder FROM claims"
            )]  # fmt: skip
            pending = {str(job_id): dst for job_id, dst in connection.execute(
                "SELECT id, dst FROM jobs WHERE state IN (?, ?)", PENDING_JOB_STATES
            )}  # fmt: skip
            active = {uuid for (uuid,) in connection.execute(
                "SELECT uuid FROM servers WHERE status = 'active'"
            )}  # fmt: skip
    finally:
        connection.close()
    return ClaimState(imaging, claims, pending, active)  # type: ignore[arg-type]


def check_claims(state: ClaimState) -> list[str]:
    """No drive shows imaging without a pending job into it; no imaging claim outlives its
    job; no guest claim outlives its server's run."""
    targets = set(state.pending_jobs.values())
    problems = [f"drive {d}: imaging {v!r} without a pending job" for d, v in
                sorted(state.imaging_drives.items()) if d not in targets]  # fmt: skip
    for drive, kind, holder in state.claims:
        if kind == "imaging" and holder not in state.pending_jobs:
            problems.append(f"drive {drive}: claimed by imaging job {holder}, which is not pending")
        if kind == "guest" and holder not in state.active_servers:
            problems.append(f"drive {drive}: claimed by server {holder}, which is not active")
    return problems


def check_adoption(active_servers: Collection[str], vm_pids: Mapping[str, list[int]]) -> list[str]:
    """Every server the platform calls active has exactly one QEMU; no QEMU runs for one that
    it does not (an orphan)."""
    problems = []
    for server in sorted(active_servers):
        count = len(vm_pids.get(server, []))
        if count != 1:
            problems.append(f"server {server}: active with {count} QEMU processes")
    for server, pids in sorted(vm_pids.items()):
        if pids and server not in active_servers:
            problems.append(f"server {server}: QEMU {pids} runs but the server is not active")
    return problems


def qemu_processes(servers: Iterable[str]) -> dict[str, list[int]]:
    """PIDs of QEMU processes whose command line names each of `servers` (`-name
    guest=UUID`, which the daemon's adoption trusts too)."""
    markers = {f"guest={server}".encode(): server for server in servers}
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        for arg in argv:
            for marker, server in markers.items():
                if arg.startswith(marker):
                    found.setdefault(server, []).append(int(entry.name))
    return found


def check_integrity(database: Path) -> list[str]:
    """`PRAGMA integrity_check` of a database no daemon has open."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as error:  # too damaged for the check to run
        rows = [str(error)]
    finally:
        connection.close()
    return [] if rows == ["ok"] else [f"{database.name}: integrity_check: {rows[0][:300]}"]


def check_attack(what: str, status: int, status_if_missing: int) -> list[str]:
    """A command on another user's object is answered as on one that does not exist: the
    same status, and never a success."""
    if status == status_if_missing and not 200 <= status < 300:
        return []
    return [f"{what}: {status} (for a missing object: {status_if_missing})"]


def check_foreign_ids(what: str, text: str, strangers: Collection[str]) -> list[str]:
    """`text` (a list, an info, an event stream of one user) names none of `strangers`."""
    leaked = sorted(stranger for stranger in strangers if stranger in text)
    return [f"{what} names another user's {leaked}"] if leaked else []


def check_daemon_resources(
    rss: tuple[int, int], fds: tuple[int, int], rss_growth_bound: int
) -> list[str]:
    """(start, end) RSS within the bound; no more descriptors at the end than at the start."""
    problems = []
    if rss[1] - rss[0] > rss_growth_bound:
        problems.append(f"RSS grew {(rss[1] - rss[0]) >> 20} MiB (bound {rss_growth_bound >> 20})")
    if fds[1] > fds[0]:
        problems.append(f"open fds {fds[0]} at the start, {fds[1]} at the end")
    return problems


def check_rss_levels(samples: list[int], tail_bound: int) -> list[str]:
    """RSS sampled at even intervals levels off: from the middle sample to the last it grows
    by at most `tail_bound` (a leak grows as fast late as early; warming caches do not).
    Fewer than 4 samples say nothing."""
    if len(samples) < 4:
        return []
    tail = samples[-1] - samples[len(samples) // 2]
    if tail > tail_bound:
        return [
            f"RSS still grew {tail >> 20} MiB in the run's second half (bound {tail_bound >> 20})"
        ]
    return []


def is_write_past_end(answer: bytes) -> bool:
    """Whether a raw HTTP answer is the contract's `507 full` for a write past a drive's end
    (docs/api.md: "a write that would pass the drive's end is `507 full`"): bad input, yet a
    5xx by contract."""
    head = answer.split(b"\r\n\r\n", 1)
    return (
        head[0].startswith(b"HTTP/1.1 507 ")
        and b"\r\nX-Elastic-Error: full" in head[0]
        and len(head) == 2
        and b"past the end of drive" in head[1]
    )


def check_answer(what: str, status: int | None, seconds: float, limit: float) -> list[str]:
    """No 5xx, and an answer (or a close) within `limit` seconds."""
    if (status is not None and status >= 500) or seconds > limit:
        return [f"{status} after {seconds:.1f} s: {what}"]
    return []


def process_fate(process: "subprocess.Popen[bytes]", wait: float = EXIT_WAIT) -> str:
    """What became of a process that stopped answering, in words: the signal that killed it,
    its exit status, or that it still runs after `wait` seconds."""
    try:
        code = process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        return f"still runs after {wait:g} s"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
