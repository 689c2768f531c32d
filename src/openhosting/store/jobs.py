"""Queries on the jobs table, and the claims imaging jobs hold on their drives."""

from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from openhosting.store.records import JobRecord
from openhosting.store.tables import claims, drives, jobs

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
PENDING = (QUEUED, RUNNING)
STATES = (QUEUED, RUNNING, DONE, FAILED)

# Claims of an imaging job: kind `imaging`, holder the job id, device says which side.
CLAIM_KIND = "imaging"
DESTINATION, SOURCE = "destination", "source"

# The statements of a job's start and end, built once, their values bound at each execute:
# SQLAlchemy builds and keys a statement made per call anew each time (~55 µs a statement on
# this machine, ~13 µs for one built once), and a job's start and its end, on the path of
# every copy, are a dozen statements each. Bound names start with `b_`: a column's own name
# is reserved for the values a row gets.
_INSERT_JOB = insert(jobs)
_JOB_BY_ID = select(jobs).where(jobs.c.id == bindparam("b_id"))
_UPDATE_JOB = update(jobs).where(jobs.c.id == bindparam("b_id"))
_UPDATE_OWNED_JOB = update(jobs).where(
    jobs.c.id == bindparam("b_id"), jobs.c.owner == bindparam("b_owner")
)
_EARLIER = jobs.alias("earlier")
_RUNNING = jobs.alias("running")
# Each user's running jobs, those whose lease holds (one run out is claimable, not running):
# counted once per claim, not once per job waiting.
_RUNNING_BY_USER = (
    select(_RUNNING.c.user, func.count().label("running"))
    .where(_RUNNING.c.state == RUNNING, _RUNNING.c.lease_until >= bindparam("b_now"))
    .group_by(_RUNNING.c.user)
    .subquery("running_by_user")
)
# Queued jobs, and running ones whose lease ran out (their daemon died).
_WAITING = or_(
    jobs.c.state == QUEUED,
    and_(jobs.c.state == RUNNING, jobs.c.lease_until < bindparam("b_now")),
)
# Each claimable job's turn (claim_jobs): its user's running jobs plus its rank among that
# user's claimable ones. Never a job behind an earlier pending job into the same drive.
_TURNS = (
    select(
        jobs.c.id,
        (
            func.coalesce(_RUNNING_BY_USER.c.running, 0)
            + func.row_number().over(partition_by=jobs.c.user, order_by=jobs.c.id)
        ).label("turn"),
    )
    .select_from(jobs.outerjoin(_RUNNING_BY_USER, _RUNNING_BY_USER.c.user == jobs.c.user))
    .where(
        _WAITING,
        ~exists().where(
            _EARLIER.c.dst == jobs.c.dst,
            _EARLIER.c.id < jobs.c.id,
            _EARLIER.c.state.in_(PENDING),
        ),
    )
    .subquery("turns")
)
# The lock is on the jobs' rows only (`OF jobs`: PostgreSQL locks no window's rows), taken
# after the sort, so a row another daemon holds is skipped for the next turn. No condition on
# the outer `jobs`: unanalyzed, PostgreSQL took it for one row and joined 200 waiting jobs to
# their turns by a nested loop of 40,000 (18 ms a claim); a row found by its key instead.
# A row another daemon's claim changed and committed after this statement's snapshot is
# locked all the same (its join is not checked again): `_CLAIM_JOB` takes it only if it
# still waits.
_CLAIMABLE = (
    select(jobs)
    .join(_TURNS, _TURNS.c.id == jobs.c.id)
    .order_by(_TURNS.c.turn, jobs.c.id)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True, of=jobs)
)
_CLAIM_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), _WAITING)
    .values(attempts=jobs.c.attempts + 1)
)
_PENDING_JOBS_INTO = (
    select(jobs)
    .where(jobs.c.dst == bindparam("b_dst"), jobs.c.state.in_(PENDING))
    .order_by(jobs.c.id)
)
_ANY_QUEUED = select(jobs.c.id).where(jobs.c.state == QUEUED).limit(1)
_INSERT_CLAIM = insert(claims)
_DELETE_JOB_CLAIMS = delete(claims).where(
    claims.c.kind == CLAIM_KIND, claims.c.holder == bindparam("b_holder")
)


def insert_job(connection: Connection, **values: Any) -> int:
    """Add a job; returns its id."""
    result = connection.execute(_INSERT_JOB, values)
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def get_job(connection: Connection, job_id: int) -> JobRecord | None:
    row = connection.execute(_JOB_BY_ID, {"b_id": job_id}).mappings().first()
    return JobRecord.from_row(row) if row is not None else None


def update_job(connection: Connection, job_id: int, **values: Any) -> None:
    connection.execute(_UPDATE_JOB, {"b_id": job_id, **values})


def update_owned_job(connection: Connection, job_id: int, by: str, **values: Any) -> bool:
    """Change job `job_id` if daemon `by` still runs it; False when another took it over
    (its lease ran out) or it is gone."""
    return (
        connection.execute(_UPDATE_OWNED_JOB, {"b_id": job_id, "b_owner": by, **values}).rowcount
        > 0
    )


def claim_jobs(
    connection: Connection, owner: str, limit: int, now: float, lease: float
) -> list[tuple[JobRecord, bool]]:
    """Take up to `limit` jobs to run for `owner`: queued ones, and running ones whose lease
    ran out (their daemon died); never one behind an earlier pending job into the same drive.

    Fair across users: each job taken is the oldest claimable job of the user with the fewest
    jobs running now (on every daemon of the database, those just taken counted), ties to the
    oldest job. So a user's n-th claimable job comes at turn `running + n`, and the jobs are
    taken by turn, then by age. With a single user that is the order they were asked for.
    No running job is stopped for another (a user whose jobs took every free slot while
    nobody else waited keeps them); but as each ends, a waiting user with fewer running jobs
    goes first.

    Rows another transaction is taking are skipped (`FOR UPDATE SKIP LOCKED`), so daemons
    claiming at once never take the same job. Each with whether it was running (taken over).
    The caller's transaction commits the claim."""
    rows = connection.execute(_CLAIMABLE, {"b_now": now, "b_limit": limit}).mappings()
    taken = []
    for job in [JobRecord.from_row(row) for row in rows]:
        claimed = connection.execute(_CLAIM_JOB, {
            "b_id": job.id, "b_now": now, "state": RUNNING, "owner": owner,
            "lease_until": now + lease, "started_at": now, "bytes_done": 0,
        }).rowcount  # fmt: skip
        if claimed:  # 0: another daemon's claim, committed since this one's snapshot
            taken.append((job, job.state == RUNNING))
    return taken


def renew_leases(connection: Connection, owner: str, until: float) -> int:
    """Extend the lease of every job `owner` runs; how many."""
    query = (
        update(jobs).where(jobs.c.owner == owner, jobs.c.state == RUNNING).values(lease_until=until)
    )
    return int(connection.execute(query).rowcount)


def pending_jobs(connection: Connection) -> list[JobRecord]:
    """Every queued or running job, in the order they were asked for."""
    query = select(jobs).where(jobs.c.state.in_(PENDING)).order_by(jobs.c.id)
    return [JobRecord.from_row(row) for row in connection.execute(query).mappings()]


def any_queued(connection: Connection) -> bool:
    """Whether a job waits to be claimed (by any daemon on the database)."""
    return connection.execute(_ANY_QUEUED).first() is not None


def pending_jobs_into(connection: Connection, dst: str) -> list[JobRecord]:
    """The queued or running jobs into drive `dst`, in order."""
    rows = connection.execute(_PENDING_JOBS_INTO, {"b_dst": dst}).mappings()
    return [JobRecord.from_row(row) for row in rows]


def list_jobs(
    connection: Connection, state: str | None = None, limit: int | None = None
) -> list[JobRecord]:
    """Jobs, newest first, optionally only those in `state`."""
    query = select(jobs).order_by(jobs.c.id.desc())
    if state is not None:
        query = query.where(jobs.c.state == state)
    if limit is not None:
        query = query.limit(limit)
    return [JobRecord.from_row(row) for row in connection.execute(query).mappings()]


def delete_ended_jobs(connection: Connection, ended_before: float) -> int:
    """Delete the rows of jobs that ended before `ended_before`; returns how many."""
    query = delete(jobs).where(jobs.c.state.in_((DONE, FAILED)), jobs.c.ended_at < ended_before)
    return connection.execute(query).rowcount


def insert_job_claim(
    connection: Connection, job_id: int, drive: str, user: str, device: str
) -> None:
    """Claim `drive` for job `job_id`: exclusively as its destination, shared as a source."""
    connection.execute(_INSERT_CLAIM, {
        "drive": drive, "user": user, "kind": CLAIM_KIND, "holder": str(job_id),
        "device": device, "exclusive": device == DESTINATION,
    })  # fmt: skip


def delete_job_claims(connection: Connection, job_id: int) -> None:
    connection.execute(_DELETE_JOB_CLAIMS, {"b_holder": str(job_id)})


def delete_orphan_job_claims(connection: Connection) -> int:
    """Remove imaging claims whose job is not pending; returns how many there were."""
    # One statement, so one snapshot: a job another node commits meanwhile commits its claims
    # with it, and neither is seen (read first, then deleted, its claims would go).
    pending = select(cast(jobs.c.id, String)).where(jobs.c.state.in_(PENDING))
    query = delete(claims).where(claims.c.kind == CLAIM_KIND, claims.c.holder.not_in(pending))
    return int(connection.execute(query).rowcount)


def clear_imaging_status(connection: Connection) -> None:
    """Forget what every drive's info shows of imaging (before setting it afresh)."""
    connection.execute(update(drives).where(drives.c.imaging.is_not(None)).values(imaging=None))
