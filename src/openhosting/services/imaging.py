"""Imaging jobs: `/drives/D/image/SRC[/gzip|gunzip]` (docs/api.md §4), accepted at once and run in
the background, durable across daemon restarts.

The rules:
- DST is the caller's own drive; SRC is their own, one whose `readers` name them (or
  everyone), or a standard drive. Anything else is missing (404), as for every command.
- From its acceptance to its end a job claims DST exclusively (write, set, destroy, attach:
  409 busy) and SRC shared: SRC stays readable but cannot be written, resized, destroyed or
  attached, so DST receives SRC's content as it was when the job was accepted (the 204).
  Standard drives, which nobody writes, are not claimed as sources; one the operator removes
  mid-job fails the job with that reason.
- A second job into the same DST waits behind the first; a drive that is the destination of
  a pending job cannot be a source (its content is in flux), and vice versa (409 busy).
- At most `storage.imaging_concurrency` jobs run at once on the host; the others wait.
- DST's info shows `imaging queued`, then `imaging NN%`; the key is absent when nothing is
  pending. After a failure it shows `imaging:error REASON` until another job into it starts.
- Each job is a row (store/jobs.py). A daemon that stops or dies mid-job starts that job
  again from the beginning on its next start; the claims stay in place meanwhile.

The bytes are moved by storage/imaging.py in a thread pool of its own, so jobs never take
the worker threads that serve reads and writes, and the event loop stays free.
"""

import asyncio
import errno
import functools
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, Engine

from openhosting.errors import ApiError, BusyError, FailedError, MissingError, UsageError
from openhosting.services.drives import Drives
from openhosting.services.events import EventBus
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.imaging import CONVERSIONS, PIPELINES, Endpoint, ImagingStopped, Tracker
from openhosting.store import drives as drive_store
from openhosting.store import jobs as job_store
from openhosting.store import row_locks
from openhosting.store.jobs import DESTINATION, DONE, FAILED, QUEUED, RUNNING, SOURCE
from openhosting.store.records import ClaimRecord, DriveRecord, JobRecord
from openhosting.store.tables import PLATFORM_USER

log = logging.getLogger("openhosting.imaging")

SECONDS_PER_DAY = 86400
# How often, at most, rows of jobs past their retention are deleted (as jobs end).
PRUNE_INTERVAL = 3600
# How long a stopping daemon waits for running jobs to notice and let go of their drives.
STOP_TIMEOUT = 30.0


class Imaging:
    """The imaging service: accepts jobs, runs them, and keeps their rows and claims."""

    def __init__(
        self,
        engine: Engine,
        drives: Drives,
        concurrency: int = 2,
        max_rate: int = 0,
        retention_days: int = 30,
        events: EventBus | None = None,
    ) -> None:
        self._engine = engine
        self._events = events if events is not None else EventBus()
        # The last percentage told to the event feed, per job: progress is published when it
        # moves, not at every report.
        self._published: dict[int, str] = {}
        self._drives = drives
        self._concurrency = max(1, concurrency)
        self._max_rate = max_rate  # source bytes per second per job; 0: no limit
        # Seconds an ended job's row is kept; 0 (or less): for ever.
        self._retention = max(0, retention_days) * SECONDS_PER_DAY
        self._pruned_at = float("-inf")
        self._running = False
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        # One lock per destination, so that jobs into one drive run one after another, in
        # the order they were accepted (asyncio locks wake their waiters in order).
        self._dst_locks: dict[str, asyncio.Lock] = {}
        self._dst_jobs: Counter[str] = Counter()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stops: dict[int, threading.Event] = {}  # of the jobs whose bytes are moving

    # -- requests ------------------------------------------------------------------------

    def submit(self, user: str, dst: str, src: str, conversion: str = "") -> int:
        """Accept a job filling `dst` from `src`; returns its id. It runs in the background."""
        if conversion not in CONVERSIONS:
            raise MissingError(
                f"Imaging conversion {conversion!r} could not be found: use gzip or gunzip"
            )
        if dst == src:
            raise UsageError(f"Drive {dst} cannot be imaged from itself")
        with self._engine.begin() as connection:
            # Both rows held: another node's claim, job or destroy on them waits for this one.
            row_locks.lock_drives(connection, [dst, src])
            dst_row = drive_store.get_drive(connection, dst)
            if dst_row is None or dst_row.user != user:
                raise MissingError(f"Drive {dst} could not be found")
            src_row = drive_store.get_drive(connection, src)
            if src_row is None or not src_row.readable_by(user):
                raise MissingError(f"Drive {src} could not be found")
            self._check_destination(connection, dst)
            self._check_source(connection, src_row)
            job_id = job_store.insert_job(
                connection,
                user=user,
                dst=dst,
                src=src,
                conversion=conversion,
                state=QUEUED,
                created_at=time.time(),
            )
            job_store.insert_job_claim(connection, job_id, dst, user, DESTINATION)
            # Standard drives need no freezing (nobody writes them), and a claim on one would
            # keep every user's servers from attaching it while anyone images from it.
            if src_row.user != PLATFORM_USER:
                job_store.insert_job_claim(connection, job_id, src, user, SOURCE)
            if not dst_row.imaging:
                drive_store.update_drive(connection, dst, imaging="queued")
            job = job_store.get_job(connection, job_id)
        assert job is not None
        log.info(
            "event=imaging_accepted job=%s user=%s drive=%s source=%s conversion=%s",
            job_id, user, dst, src, conversion or "none",
        )  # fmt: skip
        self._publish(job, "queued")
        if self._running:
            self._spawn(job)
        return job_id

    def _check_destination(self, connection: Connection, dst: str) -> None:
        for claim in drive_store.claims_on(connection, dst):
            if claim.kind == job_store.CLAIM_KIND and claim.device == DESTINATION:
                continue  # another job into DST: this one waits its turn
            raise BusyError(f"Drive {dst} is in use ({_claim_text(claim)}) and cannot be imaged")
        if changing := self._drives.changing(dst):
            raise BusyError(f"Drive {dst} is {changing} and cannot be imaged now")

    def _check_source(self, connection: Connection, src_row: DriveRecord) -> None:
        src = src_row.uuid
        for claim in drive_store.claims_on(connection, src):
            if claim.kind == job_store.CLAIM_KIND and claim.device == DESTINATION:
                raise BusyError(f"Drive {src} is being imaged and cannot be a source now")
            # A running guest may change a user's drive under the copy; standard drives are
            # read-only to guests.
            if claim.kind == "guest" and src_row.user != PLATFORM_USER:
                raise BusyError(
                    f"Drive {src} is in use ({_claim_text(claim)}) and cannot be a source now"
                )
        if changing := self._drives.changing(src):
            raise BusyError(f"Drive {src} is {changing} and cannot be a source now")

    def list_jobs(self, state: str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs, newest first (for the operator)."""
        with self._engine.connect() as connection:
            return job_store.list_jobs(connection, state, limit)

    def prune(self, ended_before: float) -> int:
        """Forget the jobs that ended before `ended_before` (a time); returns how many."""
        with self._engine.begin() as connection:
            count = job_store.delete_ended_jobs(connection, ended_before)
        if count:
            log.info("event=imaging_jobs_pruned count=%s", count)
        return count

    def _prune_expired(self) -> None:
        """Apply the retention, at most once per PRUNE_INTERVAL (the rows only pile up)."""
        now = time.time()
        if self._retention and now - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = now
            self.prune(now - self._retention)

    # -- the runner ----------------------------------------------------------------------

    async def start(self) -> None:
        """Run every pending job, those a previous daemon left unfinished first."""
        if self._running:
            return
        with self._engine.begin() as connection:
            orphans = job_store.delete_orphan_job_claims(connection)
            pending = job_store.pending_jobs(connection)
            job_store.clear_imaging_status(connection)
            for job in pending:
                if job.state == RUNNING:
                    job_store.update_job(
                        connection, job.id, state=QUEUED, started_at=None, bytes_done=0
                    )
                    log.warning(
                        "event=imaging_restarted job=%s drive=%s reason=interrupted",
                        job.id, job.dst,
                    )  # fmt: skip
                drive_store.update_drive(connection, job.dst, imaging="queued")
        if orphans:
            log.warning("event=imaging_claims_released count=%s reason=no_pending_job", orphans)
        self._prune_expired()
        self._slots = asyncio.Semaphore(self._concurrency)
        self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="imaging")
        self._running = True
        for job in pending:
            self._spawn(job)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop running jobs (they start again on the next start) and stop taking new ones."""
        if not self._running:
            return
        self._running = False  # accepted jobs now wait in the database for the next start
        for job_id, task in list(self._tasks.items()):
            if job_id in self._stops:
                self._stops[job_id].set()
            else:
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        assert self._executor is not None
        self._executor.shutdown(wait=False)

    def _spawn(self, job: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"imaging-{job.id}")
        self._tasks[job.id] = task

    async def _run(self, job: JobRecord) -> None:
        dst = job.dst
        lock = self._dst_locks.setdefault(dst, asyncio.Lock())
        self._dst_jobs[dst] += 1
        try:
            async with lock:
                assert self._slots is not None
                async with self._slots:
                    await self._execute(job)
        except asyncio.CancelledError:
            pass  # the daemon is stopping: the job stays queued for the next start
        finally:
            self._dst_jobs[dst] -= 1
            if not self._dst_jobs[dst]:
                del self._dst_jobs[dst], self._dst_locks[dst]
            self._tasks.pop(job.id, None)

    async def _execute(self, job: JobRecord) -> None:
        if not self._running:
            return
        stop = self._stops[job.id] = threading.Event()
        started = time.monotonic()
        try:
            self._mark_running(job)
            loop = asyncio.get_running_loop()
            total = await loop.run_in_executor(self._executor, self._work, job, stop)
        except ImagingStopped:
            self._requeue(job)
        except GzipStreamError as error:
            self._end(job, f"source drive {job.src} holds no whole gzip image: {error.message}")
        except ApiError as error:
            self._end(job, error.message)
        except OSError as error:
            self._end(job, _describe(error))
        except Exception:
            log.exception("event=imaging_internal_error job=%s", job.id)
            self._end(job, "internal error; the operator has the details")
        else:
            self._end(job, None, total)
            log.info(
                "event=imaging_done job=%s drive=%s bytes=%s seconds=%.2f",
                job.id, job.dst, total, time.monotonic() - started,
            )  # fmt: skip
        finally:
            del self._stops[job.id]

    # -- in a worker thread --------------------------------------------------------------

    def _work(self, job: JobRecord, stop: threading.Event) -> int:
        """Move the bytes; returns the source bytes processed."""
        with self._engine.connect() as connection:
            dst_row = drive_store.get_drive(connection, job.dst)
            src_row = drive_store.get_drive(connection, job.src)
        if dst_row is None:
            raise FailedError(f"drive {job.dst} no longer exists")
        if src_row is None:
            raise FailedError(f"source drive {job.src} no longer exists")
        tracker = Tracker(functools.partial(self._report, job), stop=stop, max_rate=self._max_rate)
        with self._drives.open_io(src_row) as src_io, self._drives.open_io(dst_row) as dst_io:
            PIPELINES[job.conversion](
                Endpoint.of(src_io, src_row.size), Endpoint.of(dst_io, dst_row.size), tracker
            )
        self._check_source_remains(job)
        return tracker.total

    def _report(self, job: JobRecord, done: int, total: int) -> None:
        # Capped at 99: 100% would claim a job done before its bytes are durable.
        percent = min(99, done * 100 // total) if total else 0
        with self._engine.begin() as connection:
            self._check_source_remains(job, connection)
            job_store.update_job(connection, job.id, bytes_done=done, bytes_total=total)
            drive_store.update_drive(connection, job.dst, imaging=f"{percent}%")
        self._publish(job, f"{percent}%")

    def _publish(self, job: JobRecord, imaging: str, error: str | None = None) -> None:
        """Tell the event feed where the job is (`queued`, `NN%`, `done`, `failed`)."""
        if self._published.get(job.id) == imaging:
            return
        if imaging in ("done", "failed"):
            self._published.pop(job.id, None)
        else:
            self._published[job.id] = imaging
        self._events.publish(
            job.user, "drive", job.dst, "imaging", imaging=imaging, job=job.id,
            source=job.src, **({"error": error} if error is not None else {}),
        )  # fmt: skip

    def _check_source_remains(self, job: JobRecord, connection: Connection | None = None) -> None:
        """A standard drive can be removed by the operator, and a user deleted, mid-job."""
        if connection is None:
            with self._engine.connect() as fresh:
                row = drive_store.get_drive(fresh, job.src)
        else:
            row = drive_store.get_drive(connection, job.src)
        if row is None:
            raise FailedError(f"source drive {job.src} was destroyed during imaging")

    # -- job states ----------------------------------------------------------------------

    def _mark_running(self, job: JobRecord) -> None:
        with self._engine.begin() as connection:
            job_store.update_job(
                connection, job.id, state=RUNNING, started_at=time.time(), bytes_done=0
            )
            drive_store.update_drive(connection, job.dst, imaging="0%", imaging_error=None)
        log.info("event=imaging_started job=%s drive=%s", job.id, job.dst)
        self._publish(job, "0%")

    def _requeue(self, job: JobRecord) -> None:
        with self._engine.begin() as connection:
            job_store.update_job(connection, job.id, state=QUEUED, started_at=None, bytes_done=0)
            drive_store.update_drive(connection, job.dst, imaging="queued")
        log.info("event=imaging_interrupted job=%s drive=%s", job.id, job.dst)
        self._publish(job, "queued")

    def _end(self, job: JobRecord, error: str | None, total: int | None = None) -> None:
        """The job is over: record how, release its claims, show what DST waits for next."""
        values: dict[str, Any] = {"state": FAILED if error else DONE, "ended_at": time.time()}
        if error:
            values["error"] = error
        else:
            values.update(bytes_done=total, bytes_total=total)
        with self._engine.begin() as connection:
            job_store.update_job(connection, job.id, **values)
            job_store.delete_job_claims(connection, job.id)
            waiting = job_store.pending_jobs_into(connection, job.dst)
            status = {"imaging": "queued" if waiting else None}
            if error:
                status["imaging_error"] = error
            drive_store.update_drive(connection, job.dst, **status)
        self._prune_expired()
        if error:
            self._publish(job, "failed", error)
        else:
            self._publish(job, "done")
        if error:
            log.warning(
                "event=imaging_failed job=%s drive=%s source=%s error=%r",
                job.id, job.dst, job.src, error,
            )  # fmt: skip


def _claim_text(claim: ClaimRecord) -> str:
    return f"{claim.kind} {claim.holder} {claim.device}".strip()


def _describe(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the platform's storage is full"
    return f"storage error: {error.strerror or error}"
