"""The order imaging jobs are claimed in (store/jobs.py `claim_jobs`), on both engines: fair
across users (the oldest claimable job of the user with the fewest jobs running, ties to the
oldest job), never a job behind an earlier pending one into the same drive, a job whose lease
ran out claimable and not counted as running; and two daemons claiming at once on one
PostgreSQL never take the same job."""

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from openhosting.store import jobs as job_store
from openhosting.store.database import open_engine
from openhosting.store.jobs import DONE, QUEUED, RUNNING

NOW = 1_000_000.0
LEASE = 60.0
A, B, C = "user-a", "user-b", "user-c"


def queue(engine: Engine, user: str, dst: str | None = None) -> int:
    with engine.begin() as connection:
        return job_store.insert_job(
            connection, user=user, dst=dst or str(uuid.uuid4()), src=str(uuid.uuid4()),
            state=QUEUED, created_at=NOW,
        )  # fmt: skip


def claim(engine: Engine, limit: int, owner: str = "daemon-1", now: float = NOW) -> list[int]:
    with engine.begin() as connection:
        return [job.id for job, _ in job_store.claim_jobs(connection, owner, limit, now, LEASE)]


def end(engine: Engine, job_id: int) -> None:
    with engine.begin() as connection:
        job_store.update_job(connection, job_id, state=DONE, ended_at=NOW)


def test_a_freed_slot_goes_to_the_user_with_no_job_running_not_to_the_oldest_job(
    engine: Engine,
) -> None:
    a1, a2, a3, a4 = [queue(engine, A) for _ in range(4)]
    assert claim(engine, 2) == [a1, a2]  # alone: A takes both slots
    b1 = queue(engine, B)
    end(engine, a1)
    # A runs one, B none: B's job goes before A's older ones (in the order asked: a3).
    assert claim(engine, 1) == [b1]
    end(engine, a2)
    assert claim(engine, 1) == [a3]
    assert claim(engine, 1) == [a4]


def test_one_claim_of_several_slots_takes_them_by_turn_across_three_users(
    engine: Engine,
) -> None:
    a1, a2 = queue(engine, A), queue(engine, A)
    assert claim(engine, 2) == [a1, a2]  # A runs 2
    b1 = queue(engine, B)
    assert claim(engine, 1) == [b1]  # B runs 1
    a3, a4, b2, b3, c1 = (
        queue(engine, A), queue(engine, A), queue(engine, B), queue(engine, B), queue(engine, C)
    )  # fmt: skip
    # Turns: c1 1; b2 2, b3 3; a3 3, a4 4. Ties to the oldest job: a3 before b3.
    assert claim(engine, 4) == [c1, b2, a3, b3]
    assert claim(engine, 4) == [a4]


def test_claims_one_at_a_time_follow_the_same_turns_as_one_claim_of_many(
    engine: Engine,
) -> None:
    a = [queue(engine, A) for _ in range(3)]
    b = [queue(engine, B) for _ in range(2)]
    c = [queue(engine, C)]
    assert [claim(engine, 1)[0] for _ in range(6)] == [a[0], b[0], c[0], a[1], b[1], a[2]]


def test_a_job_behind_a_pending_one_into_its_drive_waits_whoever_has_fewer_running(
    engine: Engine,
) -> None:
    dst = str(uuid.uuid4())
    b1 = queue(engine, B, dst)
    assert claim(engine, 1) == [b1]
    a1 = queue(engine, A, dst)  # behind b1's pending job into the same drive
    b2 = queue(engine, B)
    assert claim(engine, 2) == [b2]
    end(engine, b1)
    assert claim(engine, 2) == [a1]


def test_a_job_whose_lease_ran_out_is_claimed_again_and_not_counted_as_running(
    engine: Engine,
) -> None:
    a1, a2 = queue(engine, A), queue(engine, A)
    assert claim(engine, 2, owner="died") == [a1, a2]
    b1 = queue(engine, B)
    later = NOW + LEASE + 1  # the leases of `died` ran out: A runs nothing
    with engine.begin() as connection:
        taken = job_store.claim_jobs(connection, "daemon-2", 3, later, LEASE)
    assert [(job.id, over) for job, over in taken] == [(a1, True), (b1, False), (a2, True)]
    with engine.begin() as connection:
        job = job_store.get_job(connection, a1)
    assert job is not None and (job.state, job.owner, job.attempts) == (RUNNING, "daemon-2", 2)


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """PostgreSQL only: one daemon per SQLite file, which claims in one writer's
    transactions; several daemons share a PostgreSQL."""
    opened = open_engine(postgres_url)
    yield opened
    opened.dispose()


def test_daemons_claiming_at_once_never_take_one_job_twice(postgres_engine: Engine) -> None:
    engine = postgres_engine
    queued = {queue(engine, user) for user in (A, B, C) for _ in range(10)}
    taken: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def daemon(name: str) -> None:
        start.wait(10)
        taken[name] = []
        for _ in range(30):  # bounded: each claim takes up to 2 of the 30 jobs
            got = claim(engine, 2, owner=name)
            taken[name] += got

    threads = [threading.Thread(target=daemon, args=(f"daemon-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [job for jobs in taken.values() for job in jobs]
    assert sorted(every) == sorted(queued)  # each taken, once
