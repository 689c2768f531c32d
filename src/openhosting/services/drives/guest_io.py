"""What running guests did to their drives, added to the drives' I/O counters.

QEMU counts each attached drive's reads and writes since it started (`query-blockstats`); a
drive's `read:bytes`, `read:requests`, `write:bytes` and `write:requests` are kept in its row
for its whole life, across servers, server restarts and daemon restarts. A fold adds what QEMU
counted since the previous fold to the drive's row and moves the fold point (the mark on the
server's claim of the drive) in one transaction: folding again, from a periodic task, at stop
or from the next daemon once it adopted the VM, never counts the same I/O twice. A claim is
made at each VM start with a mark of 0, as QEMU's counters are then.
"""

import dataclasses
import logging

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.hypervisor.driver import BlockStats
from openhosting.store import drives as drive_store
from openhosting.store.records import ClaimRecord

log = logging.getLogger("openhosting.drives")

ZERO = BlockStats(0, 0, 0, 0)


def fold(mark: BlockStats, now: BlockStats) -> tuple[BlockStats, BlockStats]:
    """What to add to a drive's counters when QEMU counts `now` and `mark` of it is already
    added, and the new mark. QEMU's counters only grow while its VM runs, so a reading below
    the mark is an older one that a newer fold overtook: that part adds nothing and the mark
    never goes back."""
    delta = {}
    new_mark = {}
    for name in drive_store.IO_COUNTERS:
        before, after = getattr(mark, name), getattr(now, name)
        delta[name] = max(0, after - before)
        new_mark[name] = max(before, after)
    return BlockStats(**delta), BlockStats(**new_mark)


def _mark_of(claim: ClaimRecord) -> BlockStats:
    return BlockStats(
        claim.guest_read_bytes,
        claim.guest_read_requests,
        claim.guest_write_bytes,
        claim.guest_write_requests,
    )


def fold_guest_io(engine: Engine, readings: dict[str, dict[str, BlockStats]]) -> None:
    """Fold QEMU's counters `readings` (server → slot → counters) into the drives the servers
    hold in those slots. Bookkeeping like the API's own I/O counters: a database failure is
    logged (event=io_counters_lost), never raised, and the next fold adds what this one
    could not."""
    try:
        with engine.begin() as connection:
            for server, by_slot in readings.items():
                for claim in drive_store.guest_claims_of(connection, server):
                    now = by_slot.get(claim.device)
                    if now is None:
                        continue
                    delta, mark = fold(_mark_of(claim), now)
                    if delta != ZERO:
                        drive_store.add_guest_io(
                            connection,
                            claim.id,
                            claim.drive,
                            dataclasses.asdict(delta),
                            dataclasses.asdict(mark),
                        )
    except SQLAlchemyError as error:
        log.error(
            "event=io_counters_lost servers=%s source=guest error=%s",
            ",".join(sorted(readings)), error,
        )  # fmt: skip
