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
- At most `storage.imaging_concurrency` jobs run at once on the host; the others wait. A
  free slot goes to the oldest waiting job of the user with the fewest jobs running
  (store/jobs.py `claim_jobs`), so one user's queue does not hold back everyone else's.
- DST's info shows `imaging queued`, then `imaging NN%`; the key is absent when nothing is
  pending. After a failure it shows `imaging:error REASON` until another job into it starts.
- Each job is a row (store/jobs.py), run by the daemon that claims it (`FOR UPDATE SKIP
  LOCKED`: several daemons may share one PostgreSQL) under a lease it renews. A job whose
  daemon stopped is queued again; one whose daemon died is started again from the beginning,
  by the next start on SQLite, by another daemon once the lease ran out on PostgreSQL. The
  claims stay in place meanwhile (docs/cluster.md).

On SQLite the request that queues a job also claims it, and a job between this host's files
runs whole in a thread pool of its own: its bytes moved by storage/imaging.py, then its end
recorded and published from there: no turn of the event loop stands before or after the
bytes, jobs never take the worker threads that serve reads and writes, and the event loop
stays free. A job between two drives of one agent's host is run by that agent on its own
files (storage/agent_imaging.py), its progress and end recorded here. Any other job with a
drive on an agent's host goes through the drives' storages (storage/streamed_imaging.py): SRC
streamed from its host, converted here in the same pool, written to DST's host.
"""

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.errors import ApiError, BusyError, FailedError, MissingError, UsageError
from openhosting.services.drives.drives import Drives
from openhosting.services.events import EventBus, audit_path
from openhosting.storage.agent_imaging import image_on_agent
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.imaging import (
    CONVERSIONS,
    PIPELINES,
    Endpoint,
    ImagingStopped,
    Tracker,
)
from openhosting.storage.imaging import empty as empty_drive
from openhosting.storage.remote_storage import RemoteDriveStorage
from openhosting.storage.storage_calls import ImageCall
from openhosting.storage.streamed_imaging import StreamEnd, stream_image
from openhosting.store import audit as audit_store
from openhosting.store import drives as drive_store
from openhosting.store import jobs as job_store
from openhosting.store import notifications, row_locks
from openhosting.store.database import is_sqlite
from openhosting.store.executor import StoreExecutor
from openhosting.store.jobs import DESTINATION, DONE, FAILED, QUEUED, RUNNING, SOURCE
from openhosting.store.records import ClaimRecord, DriveRecord, JobRecord
from openhosting.store.tables import PLATFORM_USER

log = logging.getLogger("openhosting.imaging")

SECONDS_PER_DAY = 86400
# How often, at most, rows of jobs past their retention are deleted (as jobs end).
PRUNE_INTERVAL = 3600
# How long a stopping daemon waits for running jobs to notice and let go of their drives.
STOP_TIMEOUT = 30.0
# How long a daemon's claim on a job holds unless renewed (it renews three times per lease):
# a daemon that dies mid-job has its jobs taken over by another about this long after.
LEASE_SECONDS = 15.0
# The longest wait between two looks for jobs to claim (NOTIFY wakes the daemons sooner).
POLL_SECONDS = 5.0

T = TypeVar("T")
# A claimed job's source and destination rows as the claim read them (None: gone).
_Rows = tuple[DriveRecord | None, DriveRecord | None]
# A claimed job, whether it was taken over from another daemon, and its rows.
_Claimed = tuple[JobRecord, bool, _Rows]


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
        store: StoreExecutor | None = None,
        owner: str = "",
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._engine = engine
        # Where the claims and leases are written (a worker thread on PostgreSQL).
        self._store = store if store is not None else StoreExecutor(engine)
        # Who this daemon is in a job's `owner`: unique among the daemons on the database.
        self._owner = owner or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._lease = lease_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._executor: ThreadPoolExecutor | None = None
        # Set to look for jobs to claim now (one accepted, one ended, another node's NOTIFY).
        self._wakeup = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []  # the claiming and the leases' renewal
        self._tasks: dict[int, asyncio.Task[bool]] = {}  # the jobs this daemon runs
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
            notifications.notify(connection, notifications.JOBS)  # any node may run it
            job = job_store.get_job(connection, job_id)
            assert job is not None
            self._record_event(connection, job, "queued")
            claimed = self._claim_at_once(connection, {job_id: (src_row, dst_row)})
        log.info(
            "event=imaging_accepted job=%s user=%s drive=%s source=%s conversion=%s",
            job_id, user, dst, src, conversion or "none",
        )  # fmt: skip
        self._publish(job, "queued", recorded=True)
        self._start(claimed)
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
        """Run pending jobs, those a previous daemon left unfinished first, then whatever is
        queued, by whichever daemon on the database claims it first."""
        if self._running:
            return
        with self._engine.begin() as connection:
            orphans = job_store.delete_orphan_job_claims(connection)
            if is_sqlite(self._engine):
                # One process writes a SQLite file: a running job was its predecessor's, dead
                # or stopped. With several daemons on PostgreSQL, another's lease says whether
                # it still runs: the claiming takes it over once the lease has run out.
                self._requeue_all(connection)
        if orphans:
            log.warning("event=imaging_claims_released count=%s reason=no_pending_job", orphans)
        self._prune_expired()
        self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="imaging")
        self._running = True
        loop = self._loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._claim_loop(), name="imaging-claims"),
            loop.create_task(self._renew_loop(), name="imaging-leases"),
        ]

    def _requeue_all(self, connection: Connection) -> None:
        pending = job_store.pending_jobs(connection)
        job_store.clear_imaging_status(connection)
        for job in pending:
            if job.state == RUNNING:
                job_store.update_job(
                    connection, job.id, state=QUEUED, started_at=None, bytes_done=0,
                    owner=None, lease_until=None,
                )  # fmt: skip
                log.warning(
                    "event=imaging_restarted job=%s drive=%s reason=interrupted",
                    job.id, job.dst,
                )  # fmt: skip
            drive_store.update_drive(connection, job.dst, imaging="queued")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop running jobs (queued again: another daemon, or the next start, runs them)
        and stop taking new ones."""
        if not self._running:
            return
        self._running = False  # accepted jobs now wait in the database
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for stop in self._stops.values():  # each running job's, from its claim on
            stop.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        assert self._executor is not None
        self._executor.shutdown(wait=False)

    def notified(self) -> None:
        """Another node queued or let go of a job (`oh_jobs`): look for one to claim now.
        Called from the listening thread."""
        if self._loop is not None and self._running:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def _claim_at_once(self, connection: Connection, read: dict[int, _Rows]) -> list[_Claimed]:
        """A job is being queued here: claim now, in the transaction that queues it, where
        the database is a local file (SQLite: a claim costs what the request's own queries
        cost), so its bytes start moving as soon as it commits, while the 204 is still being
        sent, rather than at the claim loop's next turn of the event loop, behind the answer
        and its audit row (a 100 MiB copy is ~60 ms of work; that wait was 5-30 ms of it),
        and with no transaction of its own (its commit and the `0%` event's audit row were
        2-10 ms more before the first byte). Jobs queued before it are claimed first, as the
        claim loop would. A remote database's claim may wait on other nodes' locks: there,
        and when no slot is free, the claim loop does it. `read`: rows this transaction read
        already, by job."""
        free = self._concurrency - len(self._tasks)
        if self._running and not self._store.off_loop and free > 0:
            return self._claim_in(connection, free, read)
        self._wakeup.set()
        return []

    async def _claim_loop(self) -> None:
        """Claim jobs while slots are free: when woken (a job accepted or ended here, another
        node's NOTIFY), and at least every poll interval (a lost notification, a lease run
        out)."""
        poll = min(POLL_SECONDS, self._lease / 2)
        while self._running:
            self._wakeup.clear()
            free = self._concurrency - len(self._tasks)
            if free > 0:
                try:
                    claimed = await self._store.run(self._claim, free)
                except SQLAlchemyError as error:
                    log.error("event=imaging_claim_failed error=%s", error)
                    claimed = []
                self._start(claimed)
            # asyncio.timeout, not wait_for: before Python 3.12, wait_for swallowed the stop's
            # cancellation when the wake-up came in the same turn of the event loop, and the
            # stop waited for this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wakeup.wait()

    def _claim(self, limit: int) -> list[_Claimed]:
        """Claim up to `limit` jobs in a transaction of their own (`_claim_in`)."""
        with self._engine.begin() as connection:
            return self._claim_in(connection, limit)

    def _claim_in(
        self, connection: Connection, limit: int, read: dict[int, _Rows] | None = None
    ) -> list[_Claimed]:
        """Claim up to `limit` jobs in the caller's transaction, each with its source's and
        destination's rows as they are now (None: gone; `read`: those this transaction read
        already, by job); their `0%` events' audit rows are written there too (`_start`
        publishes them once it commits)."""
        claimed = []
        now = time.time()
        for job, taken_over in job_store.claim_jobs(
            connection, self._owner, limit, now, self._lease
        ):
            drive_store.update_drive(connection, job.dst, imaging="0%", imaging_error=None)
            rows = (read or {}).get(job.id) or (
                drive_store.get_drive(connection, job.src),
                drive_store.get_drive(connection, job.dst),
            )
            self._record_event(connection, job, "0%")
            claimed.append((job, taken_over, rows))
        return claimed

    def _start(self, claimed: list[_Claimed]) -> None:
        """Log and publish the start of jobs claimed (their rows committed), then run them:
        their `0%` comes before anything their thread publishes."""
        for job, taken_over, rows in claimed:
            if taken_over:
                log.warning(
                    "event=imaging_restarted job=%s drive=%s reason=lease_expired owner=%s",
                    job.id, job.dst, job.owner,
                )  # fmt: skip
            log.info("event=imaging_started job=%s drive=%s", job.id, job.dst)
            self._publish(job, "0%", recorded=True)
            self._spawn(job, rows)

    async def _renew_loop(self) -> None:
        """Renew the leases of the jobs this daemon runs, three times per lease."""
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._tasks:
                continue
            try:
                await self._store.run(self._renew)
            except SQLAlchemyError as error:
                log.error("event=imaging_lease_renewal_failed error=%s", error)

    def _renew(self) -> None:
        with self._engine.begin() as connection:
            job_store.renew_leases(connection, self._owner, time.time() + self._lease)

    def _spawn(self, job: JobRecord, rows: _Rows) -> None:
        """Run a claimed job. One between this host's files (or one whose drive is gone: it
        fails there) starts moving its bytes in the imaging pool at once, and its end is
        recorded and published from there too: no turn of the event loop before or after
        it. One with a drive on an agent's host is streamed by a task of the event loop."""
        stop = self._stops[job.id] = threading.Event()
        work: Coroutine[Any, Any, bool]
        if not self._running:
            work = self._requeue_later(job)  # claimed as the daemon began to stop
        elif all(row is None or self._drives.is_here(row) for row in rows):
            assert self._executor is not None
            work = self._watch(job, stop, self._executor.submit(self._run_here, job, stop, rows))
        else:
            work = self._run_streamed(job, stop, rows)
        task = asyncio.get_running_loop().create_task(work, name=f"imaging-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(functools.partial(self._ended, job))

    def _ended(self, job: JobRecord, task: asyncio.Task[bool]) -> None:
        """A job's task is over: its slot is free. The claim loop looks for another job only
        if one waits, so that its claim does not run ahead of the event feed's `done`."""
        self._stops.pop(job.id, None)
        self._tasks.pop(job.id, None)
        if task.cancelled() or task.exception() is not None or task.result():
            self._wakeup.set()

    async def _requeue_later(self, job: JobRecord) -> bool:
        self._requeue(job)  # for another daemon, or the next start, to run
        return True

    async def _watch(self, job: JobRecord, stop: threading.Event, moving: Future[bool]) -> bool:
        """Wait for a job running in the imaging pool; whether a job waits to be claimed."""
        try:
            return await asyncio.wrap_future(moving)
        except asyncio.CancelledError:
            stop.set()  # a job under way sees it, and is queued again by its own thread
            if moving.cancelled():  # it had not begun: nobody else queues it again
                self._requeue(job)
        except Exception:
            log.exception("event=imaging_internal_error job=%s", job.id)
        return True

    async def _run_streamed(self, job: JobRecord, stop: threading.Event, rows: _Rows) -> bool:
        started = time.monotonic()
        try:
            total = await self._stream(job, stop, *_present(job, rows))
        except asyncio.CancelledError:
            self._requeue(job)  # the daemon is stopping before the bytes moved
            return True
        except Exception as error:
            return self._settle(job, started, error)
        return self._settle(job, started, total)

    # -- in a worker thread --------------------------------------------------------------

    def _run_here(self, job: JobRecord, stop: threading.Event, rows: _Rows) -> bool:
        """Move the bytes between this host's files, then record how the job ended; returns
        whether a job waits to be claimed."""
        started = time.monotonic()
        try:
            total = self._work(job, stop, *_present(job, rows))
        except Exception as error:
            return self._settle(job, started, error)
        return self._settle(job, started, total)

    def _settle(self, job: JobRecord, started: float, outcome: int | Exception) -> bool:
        """Record a job's end: done (`outcome` is the source bytes processed), queued again
        (it was stopped), or failed with the reason its error gives. Returns whether a job
        waits to be claimed."""
        if isinstance(outcome, ImagingStopped):
            self._requeue(job)
            return True
        if isinstance(outcome, Exception):
            return self._end(job, started, _reason(job, outcome))
        return self._end(job, started, None, outcome)

    async def _stream(
        self, job: JobRecord, stop: threading.Event, src_row: DriveRecord, dst_row: DriveRecord
    ) -> int:
        """Move the bytes of a job with a drive on an agent's host: both on one agent's host,
        that agent runs the job; otherwise through the drives' storages, SRC read as a stream,
        converted here, written to DST's host. Returns the source bytes processed."""
        tracker = Tracker(functools.partial(self._report, job), stop=stop, max_rate=self._max_rate)
        loop = asyncio.get_running_loop()

        def offload(work: Callable[[], T], /) -> Awaitable[T]:
            return loop.run_in_executor(self._executor, work)

        storage = self._drives.storage_of(dst_row)
        if isinstance(storage, RemoteDriveStorage) and storage is self._drives.storage_of(src_row):
            # Streamed, the bytes would go to this node and back to the same host.
            call = self._image_call(job, src_row, dst_row)
            total = await image_on_agent(storage, call, tracker, offload)
            await self._store.run(self._check_source_remains, job)
            return total
        src, dst = (
            StreamEnd(
                self._drives.storage_of(row),
                row.uuid,
                row.tier,
                self._drives.master_key_of(row),
                row.size,
            )
            for row in (src_row, dst_row)
        )
        empty = None
        if self._drives.is_here(dst_row):
            # Holes punched, the file's size kept: a read of DST under way is not cut short.
            empty = functools.partial(offload, functools.partial(self._empty_here, dst_row))
        await stream_image(job.conversion, src, dst, tracker, offload, empty)
        await self._store.run(self._check_source_remains, job)
        return tracker.total

    def _image_call(self, job: JobRecord, src_row: DriveRecord, dst_row: DriveRecord) -> ImageCall:
        """The job as its drives' agent runs it: the two drives by UUID, tier, size and key."""
        return ImageCall(
            drive=dst_row.uuid, tier=dst_row.tier, size=dst_row.size,
            source=src_row.uuid, source_tier=src_row.tier, source_size=src_row.size,
            conversion=job.conversion, max_rate=max(0, self._max_rate),
            master_key=self._drives.master_key_of(dst_row),
            source_key=self._drives.master_key_of(src_row),
        )  # fmt: skip

    def _empty_here(self, row: DriveRecord) -> None:
        with self._drives.open_io(row) as drive_io:
            empty_drive(Endpoint.of(drive_io, row.size))

    def _work(
        self, job: JobRecord, stop: threading.Event, src_row: DriveRecord, dst_row: DriveRecord
    ) -> int:
        """Move the bytes between this host's files; returns the source bytes processed."""
        tracker = Tracker(functools.partial(self._report, job), stop=stop, max_rate=self._max_rate)
        with self._drives.open_io(src_row) as src_io, self._drives.open_io(dst_row) as dst_io:
            PIPELINES[job.conversion](
                Endpoint.of(src_io, src_row.size), Endpoint.of(dst_io, dst_row.size), tracker
            )
        return tracker.total  # `_end` checks that the source remains, in its transaction

    def _report(self, job: JobRecord, done: int, total: int) -> None:
        if not done:
            # The pipeline's first report, before any byte moved, says what the claim said
            # already (0%). Written from this thread it took SQLite's write lock just as the
            # request that queued the job wrote its audit row, whose busy wait then sleeps
            # (60-90 ms before the 204 of a 100 MiB copy, on a busy machine).
            return
        # Capped at 99: 100% would claim a job done before its bytes are durable.
        percent = min(99, done * 100 // total) if total else 0
        with self._engine.begin() as connection:
            self._check_source_remains(job, connection)
            if not job_store.update_owned_job(
                connection, job.id, self._owner, bytes_done=done, bytes_total=total
            ):
                # Another daemon took the job over (this one's lease ran out): stop moving.
                raise ImagingStopped("another daemon took the job over")
            drive_store.update_drive(connection, job.dst, imaging=f"{percent}%")
        self._publish(job, f"{percent}%")

    def _publish(
        self, job: JobRecord, imaging: str, error: str | None = None, recorded: bool = False
    ) -> None:
        """Tell the event feed where the job is (`queued`, `NN%`, `done`, `failed`);
        `recorded`: its audit row was written with the change (`_record_event`)."""
        if self._published.get(job.id) == imaging and not recorded:
            return
        if imaging in ("done", "failed"):
            self._published.pop(job.id, None)
        else:
            self._published[job.id] = imaging
        publish = self._events.publish_recorded if recorded else self._events.publish
        publish(
            job.user, "drive", job.dst, "imaging", imaging=imaging, job=job.id,
            source=job.src, **({"error": error} if error is not None else {}),
        )  # fmt: skip

    def _record_event(self, connection: Connection, job: JobRecord, imaging: str) -> None:
        """Write the audit row of the event `_publish(job, imaging, recorded=True)` sends
        once `connection`'s transaction commits: the event then waits for no transaction of
        its own (one before each of a job's start and its `done` reaching the feed)."""
        if self._events.audited:
            audit_store.insert_entry(
                connection, at=time.time(), user=job.user, remote="", method="EVENT",
                path=audit_path("drive", job.dst, "imaging", {"imaging": imaging}),
                object=job.dst, status=200, error="",
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

    def _requeue(self, job: JobRecord) -> None:
        with self._engine.begin() as connection:
            if not job_store.update_owned_job(
                connection, job.id, self._owner, state=QUEUED, started_at=None, bytes_done=0,
                owner=None, lease_until=None,
            ):  # fmt: skip
                log.warning("event=imaging_lease_lost job=%s drive=%s", job.id, job.dst)
                return
            drive_store.update_drive(connection, job.dst, imaging="queued")
            notifications.notify(connection, notifications.JOBS)  # another node may take it
        log.info("event=imaging_interrupted job=%s drive=%s", job.id, job.dst)
        self._publish(job, "queued")

    def _end(
        self, job: JobRecord, started: float, error: str | None, total: int | None = None
    ) -> bool:
        """The job is over: record how, release its claims, show what DST waits for next.
        Returns whether a job waits to be claimed."""
        with self._engine.begin() as connection:
            if error is None and drive_store.get_drive(connection, job.src) is None:
                # A standard drive can be removed by the operator, a user deleted, mid-job.
                error = f"source drive {job.src} was destroyed during imaging"
            values: dict[str, Any] = {"state": FAILED if error else DONE, "ended_at": time.time()}
            if error:
                values["error"] = error
            else:
                values.update(bytes_done=total, bytes_total=total)
            if not job_store.update_owned_job(connection, job.id, self._owner, **values):
                # Taken over by another daemon (this one's lease ran out): its end is theirs.
                log.warning("event=imaging_lease_lost job=%s drive=%s", job.id, job.dst)
                return True
            # Logged before the commit: whoever sees the row's end (this runs in the imaging
            # thread, not on the event loop) finds it in the log already.
            if error:
                log.warning(
                    "event=imaging_failed job=%s drive=%s source=%s error=%r",
                    job.id, job.dst, job.src, error,
                )  # fmt: skip
            else:
                log.info(
                    "event=imaging_done job=%s drive=%s bytes=%s seconds=%.2f",
                    job.id, job.dst, total, time.monotonic() - started,
                )  # fmt: skip
            job_store.delete_job_claims(connection, job.id)
            notifications.notify(connection, notifications.JOBS)  # the next job into DST
            waiting = job_store.pending_jobs_into(connection, job.dst)
            status = {"imaging": "queued" if waiting else None}
            if error:
                status["imaging_error"] = error
            drive_store.update_drive(connection, job.dst, **status)
            queued = job_store.any_queued(connection)
            self._record_event(connection, job, "failed" if error else "done")
        self._publish(job, "failed" if error else "done", error, recorded=True)
        self._prune_expired()
        return queued


def _present(job: JobRecord, rows: _Rows) -> tuple[DriveRecord, DriveRecord]:
    """A job's source and destination rows, both still there."""
    src_row, dst_row = rows
    if dst_row is None:
        raise FailedError(f"drive {job.dst} no longer exists")
    if src_row is None:
        raise FailedError(f"source drive {job.src} no longer exists")
    return src_row, dst_row


def _reason(job: JobRecord, error: Exception) -> str:
    """What a failed job's DST shows as its error."""
    if isinstance(error, GzipStreamError):
        return f"source drive {job.src} holds no whole gzip image: {error.message}"
    if isinstance(error, ApiError):
        return error.message
    if isinstance(error, OSError):
        return _describe(error)
    log.error("event=imaging_internal_error job=%s", job.id, exc_info=error)
    return "internal error; the operator has the details"


def _claim_text(claim: ClaimRecord) -> str:
    return f"{claim.kind} {claim.holder} {claim.device}".strip()


def _describe(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the platform's storage is full"
    return f"storage error: {error.strerror or error}"
