"""Drive files on an agent's host that no drive row names there, removed: when this API node
(re)connects to the host's agent, and every `interval` seconds after (docs/cluster.md, 'Drive
bytes on the agents'). This host's own drive directory is looked at every `interval` seconds
too, its files removed only when no row at all names them (the rule of `repair_drive_files`
at start): a daemon killed between a destroy's row and its file, and started again at once,
kept that file at start as younger than the grace.

Why such files exist: a destroy deletes its row first, then asks the host's agent to remove
the file; an agent that does not answer keeps it (`event=drive_bytes_left`). The rows are the
truth, the files follow them, as `repair_drive_files` does for this host's own directory at
start.

What is never removed:
- A file being made. A create writes its file first and its row after (so that a row never
  names bytes that do not exist), through any API node: a file whose row is not yet written
  looks like an orphan. Only files unmodified for `grace` seconds are candidates, and the
  agent looks at the file's age again as it removes it (by its own clock), so a file written
  meanwhile stays.
- A file whose row names another host while one of the drive's servers is being moved (a
  host drain): the target's copy has a row naming the source until the move ends, the
  source's file one naming the target until it is removed. Any operation under way, through
  any API node, on a server holding a claim on the drive keeps the file (the one rule of
  the reconciles: `Operations.under_way`); the rows are read again after that look, so a
  move that ended in between is seen by its rows.
A file whose row names another host and no operation is under way on its servers is a
move's leftover (a source that could not remove its file: `drive_bytes_left` too): it goes.

The same look removes the host's copies of standard drives that are gone or of an older
generation (services/drives/standard_copies.py), once its drive files are done.

The agent lists its files a page at a time (`DriveStorage.list_files`, in UUID order), and
each page is looked up in the database by its UUIDs: memory stays one page, whatever the
number of files.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine

from openhosting.services.cluster.host_storages import HostStorages
from openhosting.services.drives.standard_copies import StandardCopies
from openhosting.services.operations import Operations
from openhosting.storage.drive_storage import FILES_PAGE, DriveFile
from openhosting.store import drives as drive_store

log = logging.getLogger("openhosting.drives")


class DriveOrphans:
    """Removes the drive files of agents' hosts, and of this one, that no drive row names
    there."""

    def __init__(
        self,
        engine: Engine,
        storages: HostStorages,
        servers: Operations,
        *,
        grace: float,
        interval: float,
        hosts_up: Callable[[], list[str]],
        page: int = FILES_PAGE,
        copies: StandardCopies | None = None,
    ) -> None:
        self._engine = engine
        self._storages = storages
        self._servers = servers  # the servers' operations: whose drives may be moving
        self.grace = grace
        self.interval = interval
        self._hosts_up = hosts_up  # the agents' hosts reachable now, for the periodic look
        self._page = page
        self._copies = copies  # the standard drives' copies in the hosts' image caches
        self._due: set[str] = set()  # hosts to look at next
        self._woken = asyncio.Event()

    def wake(self, host: str) -> None:
        """The agent of `host` was just (re)connected: its files are looked at soon."""
        self._due.add(host)
        self._woken.set()

    async def reconcile(self, host: str) -> int:
        """Remove the orphan files of agent host `host`: how many were removed. Errors of the
        agent (unreachable: 503) or of the database are raised."""
        storage = self._storages.of(host)
        local = storage is self._storages.local
        removed, after = 0, ""
        while True:
            files = await storage.list_files(after, self._page)
            old = [file for file in files if file.age >= self.grace]
            find = self._local_orphans if local else functools.partial(self._orphans, host)
            for file in await asyncio.to_thread(find, old):
                if await storage.remove_orphan(file.drive, file.tier, self.grace):
                    removed += 1
                    log.warning(
                        "event=drive_file_orphan_removed host=%s drive=%s tier=%s size=%s",
                        host, file.drive, file.tier, file.size,
                    )  # fmt: skip
            if len(files) < self._page:
                break
            after = files[-1].drive
        log.info("event=drive_files_reconciled host=%s removed=%s", host, removed)
        if self._copies is not None and not local:
            await self._copies.reconcile(host)
        return removed

    def _orphans(self, host: str, files: list[DriveFile]) -> list[DriveFile]:
        """Those of `files` (on `host`) that no drive row names there and no move needs."""
        if not files:
            return []
        uuids = [file.drive for file in files]
        with self._engine.connect() as connection:
            hosts = drive_store.drive_hosts(connection, uuids)
            holders = drive_store.claim_holders(connection, uuids)
        elsewhere = [uuid for uuid, named in hosts.items() if named != host]
        under_way = self._servers.under_way() if elsewhere else set()
        moving = {
            uuid
            for uuid in elsewhere
            if any(server in under_way for server in holders.get(uuid, ()))
        }
        with self._engine.connect() as connection:
            # Read again after the look at the moves: a move that ended in between has
            # written its rows.
            again = drive_store.drive_hosts(connection, uuids)
        # No row (None), or a row of another host, in both reads: nothing here needs it.
        return [
            file
            for file in files
            if file.drive not in moving
            and hosts.get(file.drive) != host
            and again.get(file.drive) != host
        ]

    def _local_orphans(self, files: list[DriveFile]) -> list[DriveFile]:
        """Those of `files` (this host's own) that no drive row names at all: a row naming
        another host keeps its file here, as at start (`repair_drive_files`)."""
        if not files:
            return []
        with self._engine.connect() as connection:
            named = drive_store.drive_hosts(connection, [file.drive for file in files])
        return [file for file in files if file.drive not in named]

    async def run(self) -> None:
        """Look at each host woken (`wake`), and at every agent host up every `interval`
        seconds, until cancelled. A look that fails is logged and made again at the next
        wake-up or round."""
        next_round = time.monotonic() + self.interval
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_round - time.monotonic())):
                    await self._woken.wait()
            except TimeoutError:
                pass
            self._woken.clear()
            if time.monotonic() >= next_round:
                # This host's own files too: a daemon killed between a destroy's row and its
                # file (or a create's file and its row) left one that the start kept, being
                # younger than the grace then.
                self._due.update([self._storages.local_name, *self._hosts_up()])
                next_round = time.monotonic() + self.interval
            while self._due:
                host = min(self._due)
                self._due.discard(host)
                try:
                    await self.reconcile(host)
                except Exception as error:  # an agent gone again, a busy database
                    log.warning("event=drive_files_reconcile_failed host=%s error=%s", host, error)
