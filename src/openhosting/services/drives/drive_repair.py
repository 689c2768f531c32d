"""Putting the drive directory right when the daemon starts, after one that was killed
half-way: the rows are the truth, the files follow them.

- A resize is answered once its row is written; a daemon killed before the file followed
  leaves a file of the wrong size: it is resized to the row's size (what a shrink cut stays
  cut, a grow reads as zeros).
- A create writes its file before its row, a destroy removes its row before its file: a
  daemon killed between leaves a file no row names, which nobody can reach. It is removed,
  unless it changed in the last `grace` seconds (`storage.orphan_grace_seconds`, 600 by
  default: `openhosting-admin standard add` also writes its file before its row, and may be
  doing so right now). One younger than that is left to the daemon's periodic look
  (services/drives/drive_orphans.py).
- A gzip write stages its bytes in a nameless file; where the file system cannot make one,
  a named `*.staging` file is unlinked at once, and a daemon killed in between leaves it:
  it is removed (no write is under way at start).

Every tier's directory is scanned. A file is an orphan only when no row at all names its
drive: a drive whose tier moved to another directory in the configuration keeps its file
where it was (logged as missing from its tier) until the operator moves it, and so does a
drive of another host's agent (its bytes are there; a file of it here, from before drives
were streamed to agents, is left for the operator). Only this host's drives are resized.
"""

import logging
import time
from collections.abc import Callable

from openhosting.storage.drive_files import DriveFiles
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.write_stage import remove_staging_leftovers
from openhosting.store.records import DriveRecord

log = logging.getLogger("openhosting.drives")

ORPHAN_GRACE_SECONDS = 600  # the default of `storage.orphan_grace_seconds`


def repair_drive_files(
    tiers: DriveTiers,
    rows: list[DriveRecord],
    master_key_of: Callable[[DriveRecord], bytes | None],
    is_here: Callable[[DriveRecord], bool] = lambda _row: True,
    grace: float = ORPHAN_GRACE_SECONDS,
) -> tuple[int, int]:
    """Repair the files of the drives of `rows` (all of them, `is_here` telling this host's):
    how many files were resized, and how many files without a row were removed."""
    staged = sum(remove_staging_leftovers(files.root) for files in tiers.directories())
    if staged:
        log.warning("event=drive_staging_files_removed count=%s", staged)
    resized = _fit_files_to_rows(tiers, [row for row in rows if is_here(row)], master_key_of)
    return resized, sum(_remove_orphan_files(files, rows, grace) for files in tiers.directories())


def _fit_files_to_rows(
    tiers: DriveTiers,
    rows: list[DriveRecord],
    master_key_of: Callable[[DriveRecord], bytes | None],
) -> int:
    fixed = 0
    for row in rows:
        uuid, size = row.uuid, row.size
        if row.tier not in tiers.names:
            log.error("event=drive_tier_unknown drive=%s tier=%s", uuid, row.tier)
            continue
        files = tiers.of(row.tier)
        try:
            if files.holds_size(uuid, size, encrypted=row.wrapped_master_key is not None):
                continue
            files.resize(uuid, size, master_key_of(row), kept=size)
        except OSError as error:
            log.error("event=drive_file_unfixable drive=%s error=%s", uuid, error)
            continue
        log.warning("event=drive_file_resized drive=%s size=%s", uuid, size)
        fixed += 1
    return fixed


def _remove_orphan_files(files: DriveFiles, rows: list[DriveRecord], grace: float) -> int:
    known = {row.uuid for row in rows}
    removed = 0
    for uuid in files.unchanged_since(time.time() - grace):
        if uuid not in known:
            files.destroy(uuid)
            log.warning("event=drive_file_orphan_removed drive=%s", uuid)
            removed += 1
    return removed
