"""Servers: the API's commands on them (docs/api.md §5), their configuration, ownership and claims.

Each command checks that the server is the user's and that its configuration may be used (its
drives the user's or readable cdroms, its NICs' resources the user's), then acts in its turn on
the server (`SERVER_RULES` in services/operations.py: lifecycle actions run one at a time).
Starting claims the drives and a VNC display here; the VM itself (start, live changes, exit
rules, adoption after a daemon restart) is `ServerLifecycle`'s.
"""

import asyncio
import functools
import logging
import time
import uuid as uuid_module
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from openhosting.errors import ApiError, BusyError, FailedError, MissingError, UsageError
from openhosting.hypervisor.errors import HypervisorError
from openhosting.model.common import is_uuid
from openhosting.model.server import ServerConfig, check_sent_text
from openhosting.reverter import Reverter
from openhosting.services.accounts.billing import Billing
from openhosting.services.drives.drives import AttachableDrive, Drives
from openhosting.services.off_loop import INLINE_ITEMS, built_in_worker
from openhosting.services.operations import (
    DESTROY,
    DUMP,
    RESET,
    SET,
    SHUTDOWN,
    START,
    STOP,
    Operation,
)
from openhosting.services.servers.server_info import server_info
from openhosting.services.servers.server_lifecycle import DUMPED, ServerLifecycle
from openhosting.services.servers.server_moves import ServerMoves
from openhosting.store import drives as drive_store
from openhosting.store import row_locks, space_reserve
from openhosting.store import servers as server_store
from openhosting.store.executor import StoreExecutor
from openhosting.store.reader import Reader
from openhosting.store.records import ServerRecord, encode_server_config
from openhosting.wire.payload import PropertiesList, Value

log = logging.getLogger("openhosting.servers")

# QEMU's words when its VNC server cannot bind the port of the display it was given.
VNC_PORT_TAKEN = "Failed to find an available port"
VNC_PORT_ATTEMPTS = 3


def _missing(uuid: str) -> MissingError:
    return MissingError(f"Server {uuid} could not be found")


def _status_without_vm(row: ServerRecord) -> str:
    """The status of a server that has no VM: as its row says."""
    return row.status if row.status in ("dead", DUMPED) else "stopped"


def _delete_server(uuid: str, connection: Connection) -> None:
    server_store.remove_guest_claims(connection, uuid)
    server_store.delete_server(connection, uuid)


@dataclass(frozen=True)
class _KeptAnswer:
    """`servers/info` of one user whose servers have no VM: the payload, their ids, and the
    hosts offline when it was made."""

    payload: PropertiesList
    servers: frozenset[str]
    offline: frozenset[str]


class Servers:
    """The server service."""

    def __init__(
        self,
        engine: Engine,
        reader: Reader,
        drives: Drives,
        lifecycle: ServerLifecycle,
        billing: Billing | None = None,
        store: StoreExecutor | None = None,
    ) -> None:
        self._billing = billing
        # Where the create's checks and insert run (off the loop on PostgreSQL).
        self._store = store if store is not None else StoreExecutor(engine)
        self._engine = engine
        self._reader = reader
        self._drives = drives
        self.networks = lifecycle.networks  # the servers' NICs: addresses, DHCP, taps
        # One claim at a time in this process: a claim runs in a worker thread (its VNC probe
        # may ask an agent), where two would read the same free display before either wrote.
        self._claiming = asyncio.Lock()
        # The servers whose claims were made and whose VMs are not yet `active` (changed on
        # the event loop, under `_claiming` for an addition).
        self._starting: set[str] = set()
        self.lifecycle = lifecycle
        # The lifecycle's own dict: who is active is read here, changed only there.
        self._active: dict[str, str] = self.lifecycle.active
        # What runs on each server (the lifecycle's: the end of a dumped VM is one of them).
        self.operations = self.lifecycle.operations
        self.moves = ServerMoves(
            engine,
            lifecycle,
            drives,
            lifecycle.hosts,
            float(lifecycle.config.hypervisor.start_timeout),
        )

    # -- lookups ---------------------------------------------------------------------

    def _owned(self, connection: Connection, user: str, uuid: str) -> ServerRecord:
        row = server_store.get_server(connection, uuid)
        if row is None or row.user != user:
            raise _missing(uuid)
        return row

    def _get(self, user: str, uuid: str) -> ServerRecord:
        with self._engine.connect() as connection:
            return self._owned(connection, user, uuid)

    def _turn(self, user: str, uuid: str, action: str) -> AbstractAsyncContextManager[Operation]:
        """`action` on the user's server `uuid` in its turn (404 at once if it is not theirs:
        only real servers get a turn, one per id that anyone sends would grow unbounded)."""
        self._get(user, uuid)
        return self.operations.turn(uuid, action)

    def _status(self, row: ServerRecord) -> str:
        """A server with a VM is as the hypervisor says (`active` or `paused`)."""
        if (running := self.lifecycle.status(row.uuid)) is not None:
            return running
        return _status_without_vm(row)

    def run_dir(self, uuid: str) -> Path:
        """The run directory of the server's VM (pidfile, sockets, serial log, argv)."""
        return self.lifecycle.run_dir(uuid)

    def serial_log(self, uuid: str, user: str | None = None) -> bytes:
        """What the server printed on its serial port (the last of it, within the log's
        bound). For its owner `user` only while the server exists; for the operator (no
        user) also what is kept of a destroyed server. From a worker thread: the log of a VM
        on an agent's host is asked of its agent."""
        if user is not None:
            self._get(user, uuid)
        elif not is_uuid(uuid):
            raise _missing(uuid)
        content = self.lifecycle.logs.read(uuid, self.lifecycle.driver_of(uuid).serial_log(uuid))
        if content is None:
            raise MissingError(f"Server {uuid} has no serial log")
        return content

    # -- reading ---------------------------------------------------------------------

    def list_rows(self, user: str) -> list[dict[str, Value]]:
        return [
            {"server": uuid, "cpu": cpu, "mem": mem}
            for uuid, cpu, mem in server_store.read_server_sizes_of(self._reader, user)
        ]

    # The infos read their rows through the Reader: SQLAlchemy's execute costs more than the
    # query and the answer together. A server's info reads its row afresh (a change answers
    # with it); the list's rows are kept until the next commit.
    async def info(self, user: str, uuid: str) -> dict[str, Value]:
        row = server_store.read_server(self._reader, uuid)
        if row is None or row.user != user:
            raise _missing(uuid)
        return await self._info_of(row)

    async def info_all(self, user: str) -> list[dict[str, Value]]:
        # A database across the network: every read is I/O, so the rows are read in the
        # worker thread whatever their number.
        reader = self._reader
        if (
            reader.local
            and reader.all_cached(server_store.SERVER_COUNT_BY_USER, user=user)[0][0]
            <= INLINE_ITEMS
        ):
            # The rows are kept while nothing has been committed (every change of a server
            # is a commit); whether each has a VM is asked every time.
            rows = reader.memo(
                ("servers/info", user), lambda: server_store.read_servers_of(reader, user)
            )
            return await self._with_live_figures(
                user, [(row, self._info_at_once(row)) for row in rows]
            )
        # Thousands (or a remote database): the rows and the infos of servers without a VM
        # are made in a worker thread; those with one (known here, on the loop) add their
        # live figures after.
        with_vm = set(self.lifecycle.active)
        built = await built_in_worker(functools.partial(self._infos_without_vm, user, with_vm))
        return await self._with_live_figures(user, built)

    def kept_info_payload(self, user: str) -> PropertiesList | None:
        """`servers/info` of `user` if its answer is kept and still true, without reading the
        database nor making a coroutine; else None. An answer is kept only while none of its
        servers has a VM (a running one's figures are asked of QEMU at each info): until the
        next commit, a VM started among them, or a change of the offline hosts."""
        kept: _KeptAnswer | None = self._reader.kept(("servers/info/answer", user))
        if (
            kept is None
            or kept.offline != self._offline_hosts()
            or not self._active.keys().isdisjoint(kept.servers)
        ):
            return None
        return kept.payload

    async def info_payload(self, user: str) -> PropertiesList:
        """`servers/info`: `info_all` as the answer's payload, the same object while it is
        kept (`kept_info_payload`), so that its rendered bodies (kept on it) are made once."""
        kept = self.kept_info_payload(user)
        if kept is not None:
            return kept
        if user in self._active.values():  # live figures to ask for: nothing to keep
            return PropertiesList(await self.info_all(user))
        reader = self._reader
        answer: _KeptAnswer | None
        if reader.local:
            if reader.all_cached(server_store.SERVER_COUNT_BY_USER, user=user)[0][0] > INLINE_ITEMS:
                return PropertiesList(await self.info_all(user))
            answer = self._kept_answer(user, set(self._active))
        else:  # every read is network I/O: in a worker thread (whose reads the Reader keeps)
            with_vm = set(self._active)
            answer = await built_in_worker(functools.partial(self._kept_answer, user, with_vm))
        if answer is None or not self._active.keys().isdisjoint(answer.servers):
            return PropertiesList(await self.info_all(user))
        return answer.payload

    def _kept_answer(self, user: str, with_vm: set[str]) -> "_KeptAnswer | None":
        """The answer of `servers/info` made once while nothing is committed, or None when
        one of `user`'s servers is in `with_vm` (its figures are live)."""

        def make() -> _KeptAnswer | None:
            offline = self._offline_hosts()  # before: a change during the make voids it
            rows = server_store.read_servers_of(self._reader, user)
            if any(row.uuid in with_vm for row in rows):
                return None
            infos = [
                server_info(
                    row.uuid, row.user, _status_without_vm(row), row.config, None,
                    *self._host_of(row),
                )
                for row in rows
            ]  # fmt: skip
            return _KeptAnswer(PropertiesList(infos), frozenset(row.uuid for row in rows), offline)

        return self._reader.memo(("servers/info/answer", user), make)

    def _offline_hosts(self) -> frozenset[str]:
        hosts = self.lifecycle.hosts
        return hosts.offline if hosts is not None else frozenset()

    def _info_at_once(self, row: ServerRecord) -> dict[str, Value] | None:
        """The info of a server without live figures to ask its VM for; None for a running
        one. (A task per stopped server cost more than its info.)"""
        status = self._status(row)
        if status in ("active", "paused"):
            return None
        host = self._host_of(row)
        # Made of the row alone: kept while nothing is committed, as the rows are (the
        # configuration's properties cost more than the rest of a listing). Only for this
        # very row object: one read again after a commit is never answered by an older info.
        made_from, info = self._reader.memo(
            ("servers/info/stopped", row.uuid, status, host),
            lambda: (row, server_info(row.uuid, row.user, status, row.config, None, *host)),
        )
        if made_from is not row:
            return server_info(row.uuid, row.user, status, row.config, None, *host)
        return info

    async def _with_live_figures(
        self, user: str, built: list[tuple[ServerRecord, dict[str, Value] | None]]
    ) -> list[dict[str, Value]]:
        """The infos of `built`'s servers (`user`'s), in order, those still None made with
        their VMs' live figures. Their monitors are asked at once: one slow to answer (a busy
        guest under TCG, a stuck QEMU) delays the list by its own wait, not by every other's."""
        waiting = [row for row, info in built if info is None]
        if not waiting:
            return [info for _, info in built if info is not None]
        # Their NICs in one query, not one per server (through the store's executor: on
        # PostgreSQL a read is network I/O).
        plans = await self._store.run(
            self.networks.read_plans_of_users_servers,
            self._reader,
            user,
            [row.uuid for row in waiting],
        )
        with self.networks.read_ahead(plans):
            live = iter(await asyncio.gather(*(self._info_of(row) for row in waiting)))
        return [info if info is not None else next(live) for _, info in built]

    def _infos_without_vm(
        self, user: str, with_vm: set[str]
    ) -> list[tuple[ServerRecord, dict[str, Value] | None]]:
        """Every server of `user` with its info, or None for those in `with_vm` (engine
        only: for a worker thread)."""
        with self._engine.connect() as connection:
            rows = server_store.servers_of(connection, user)
        return [
            (row, None if row.uuid in with_vm else server_info(
                row.uuid, row.user, _status_without_vm(row), row.config, None, *self._host_of(row)
            ))
            for row in rows
        ]  # fmt: skip

    async def _info_of(self, row: ServerRecord) -> dict[str, Value]:
        config = row.config
        status = self._status(row)  # before any await: the VM may end meanwhile
        running = status in ("active", "paused")
        live = await self.lifecycle.live_figures(row, config) if running else None
        return server_info(row.uuid, row.user, status, config, live, *self._host_of(row))

    def _host_of(self, row: ServerRecord) -> tuple[str, bool]:
        """The host that runs (or last ran) the server's VM (its row's, else this one), and
        whether it is offline."""
        return row.host or self._drives.local_host, self.lifecycle.host_offline(row.host)

    # -- configuration ---------------------------------------------------------------

    def _check_config(self, user: str, config: ServerConfig) -> list[AttachableDrive]:
        """Every drive must be the user's, or readable by them and attached as a cdrom."""
        attachable = []
        for attachment in config.drives:
            try:
                drive = self._drives.attachable(user, attachment.drive)
            except MissingError:
                raise MissingError(
                    f"{attachment.slot}: drive {attachment.drive} could not be found"
                ) from None
            if not drive.owned and attachment.media != "cdrom":
                raise UsageError(
                    f"{attachment.slot}: drive {attachment.drive} is not yours; attach it with"
                    f" {attachment.slot}:media cdrom (read-only)"
                )
            attachable.append(drive)
        self.networks.check(user, config)  # IP and VLAN resources, VLANs in user mode
        return attachable

    async def create(self, user: str, properties: dict[str, str], start: bool) -> dict[str, Value]:
        config = ServerConfig.from_properties(properties)
        check_sent_text(properties, config)
        uuid = str(uuid_module.uuid4())
        await self._store.run(self._insert_new, user, uuid, config)
        log.info("event=server_created user=%s server=%s", user, uuid)
        if start:
            with Reverter() as revert:
                # A create that cannot start leaves nothing behind.
                revert.add(functools.partial(self._delete_new, uuid))
                await self.start(user, uuid)
                revert.success()
        return await self.info(user, uuid)

    def _insert_new(self, user: str, uuid: str, config: ServerConfig) -> None:
        """The row of a new stopped server, once its drives, resources and limit allow it."""
        self._check_config(user, config)
        with self._engine.begin() as connection:
            if self._billing is not None:
                self._billing.check_new_server(connection, user)  # holds the user's row
            server_store.insert_server(
                connection,
                uuid=uuid,
                user=user,
                config=encode_server_config(config),
                status="stopped",
                created_at=time.time(),  # sub-second: lists keep creation order
            )

    def _delete_new(self, uuid: str) -> None:
        with self._engine.begin() as connection:
            server_store.delete_server(connection, uuid)

    async def set_config(
        self, user: str, uuid: str, properties: dict[str, str]
    ) -> dict[str, Value]:
        async with self._turn(user, uuid, SET):
            row = self._get(user, uuid)
            current = row.config
            merged = current.merge(properties)
            running = uuid in self._active
            if not running and row.status == DUMPED:
                # Its saved memory knows its devices: only what a running server may change.
                if offline := current.offline_changes(properties):
                    raise BusyError(
                        f"Server {uuid} is dumped: {', '.join(offline)} can only be changed"
                        " once it is stopped"
                    )
            elif not running:
                self._check_config(user, merged)
            else:
                if offline := current.offline_changes(properties):
                    raise BusyError(
                        f"Server {uuid} is active: {', '.join(offline)} can only be changed"
                        " while it is stopped"
                    )
                await self.lifecycle.reconfigure(uuid, current, merged)
            with self._engine.begin() as connection:
                server_store.update_server(
                    connection,
                    uuid,
                    config=encode_server_config(merged),
                )
        return await self.info(user, uuid)

    # -- power -----------------------------------------------------------------------

    async def start(self, user: str, uuid: str) -> None:
        async with self._turn(user, uuid, START):
            row = self._get(user, uuid)
            if (status := self.lifecycle.status(uuid)) is not None:
                if status != "paused":
                    raise BusyError(f"Server {uuid} is already active")
                await self._resume(uuid)
                return
            config = row.config
            drives = self._check_config(user, config)
            for drive in drives:
                if not drive.available:
                    raise BusyError(
                        f"Drive {drive.uuid} is inactive: its storage is unavailable now"
                    )
            restore = row.status == DUMPED
            host = self.lifecycle.place(config)
            for attempt in range(1, VNC_PORT_ATTEMPTS + 1):
                try:
                    await self._start_once(user, uuid, config, drives, restore, host)
                    return
                except HypervisorError as error:
                    # The display's port was free when probed and taken before QEMU bound
                    # it (another process of the host): undone, so the next claim probes
                    # it taken and picks another display.
                    if VNC_PORT_TAKEN not in str(error) or attempt == VNC_PORT_ATTEMPTS:
                        raise
                    log.warning(
                        "event=server_start_retried server=%s reason=vnc_port_taken attempt=%s",
                        uuid, attempt,
                    )  # fmt: skip

    async def _start_once(
        self,
        user: str,
        uuid: str,
        config: ServerConfig,
        drives: list[AttachableDrive],
        restore: bool,
        host: str,
    ) -> None:
        async with Reverter() as revert:
            # In a worker thread: the display's port is probed on the VM's host, which may be
            # an agent's, asked over the wire.
            async with self._claiming:
                display = await asyncio.to_thread(
                    self._claim, user, uuid, config, drives, restore, host, set(self._starting)
                )
                # Its cpu and mem count against the account from here, not from when its VM
                # runs: the starts claiming meanwhile would each pass the limit.
                self._starting.add(uuid)
            try:
                # A dumped server's drives stay its own whether or not it comes back.
                revert.add(functools.partial(self._release, uuid, drives=not restore))
                await self.lifecycle.start_vm(
                    user, uuid, config, drives, display, restore, host=host
                )
                revert.success()
            finally:
                self._starting.discard(uuid)  # `active` now (counted as such), or not started

    async def _resume(self, uuid: str) -> None:
        """`start` on a paused server runs it again; a write that a full disk held is
        retried, and pauses it again while the disk stays full."""
        try:
            await self.lifecycle.driver_of(uuid).resume(uuid)
        except HypervisorError as error:
            raise FailedError(f"Server {uuid} could not be resumed: {error}") from error
        log.info("event=server_resumed server=%s by=start", uuid)

    def _claim(
        self,
        user: str,
        uuid: str,
        config: ServerConfig,
        drives: list[AttachableDrive],
        held: bool = False,
        host: str = "",
        starting: Collection[str] = (),
    ) -> int | None:
        """Claim the drives (409 if another server or an imaging job holds one) and pick a
        VNC display free on `host`, in one transaction. With `held`, the server holds its
        claims already (it is dumped): only the display is picked. `starting`: the servers
        whose claims passed and whose VMs are not yet active (their cpu and mem count)."""
        with self._engine.begin() as connection:
            if self._billing is not None:
                self._billing.check_server_start(
                    connection, user, uuid, config.cpu, config.mem, starting
                )
            if not held:
                self._claim_drives(connection, user, uuid, config, drives)
            else:
                drive_store.reset_guest_io_marks(connection, uuid)
            return self.lifecycle.vnc.claim(connection, uuid, config, host)

    def _claim_drives(
        self,
        connection: Connection,
        user: str,
        uuid: str,
        config: ServerConfig,
        drives: list[AttachableDrive],
    ) -> None:
        # Their rows held: a claim, an imaging job or a destroy of one of them by another
        # node waits for this transaction and then sees its claims.
        present = row_locks.lock_drives(connection, [d.uuid for d in drives])
        for attachment in config.drives:
            # Checked again under the locks: a destroy that committed since `_check_config`
            # leaves a drive no claim may name (its foreign key would fail as a 500).
            if attachment.drive not in present:
                raise MissingError(
                    f"{attachment.slot}: drive {attachment.drive} could not be found"
                )
        existing = server_store.claims_on_drives(connection, [d.uuid for d in drives])
        by_drive = {drive.uuid: drive for drive in drives}
        for claim in existing:
            drive = by_drive[claim.drive]
            if claim.kind != "guest" or claim.exclusive or drive.exclusive:
                raise BusyError(f"Drive {claim.drive} is in use ({claim.kind} {claim.holder})")
        server_store.add_guest_claims(
            connection,
            user,
            uuid,
            [(a.drive, a.slot, by_drive[a.drive].exclusive) for a in config.drives],
        )

    def _release(self, uuid: str, drives: bool = True) -> None:
        with self._engine.begin() as connection:
            if drives:
                server_store.remove_guest_claims(connection, uuid)
            self.lifecycle.vnc.release(connection, uuid)

    async def stop(self, user: str, uuid: str) -> None:
        async with self._turn(user, uuid, STOP):
            row = self._get(user, uuid)
            if uuid in self._active:
                await self.lifecycle.stop_vm(uuid, f"a stop of server {uuid}")
            elif row.status == DUMPED:
                # Power-off of a saved guest: its state is dropped, its drives released.
                if await asyncio.to_thread(self.lifecycle.discard_dump, uuid):
                    await self.lifecycle.remove_run_dir(uuid)
                log.info("event=server_stopped user=%s server=%s status=stopped", user, uuid)

    async def shutdown(self, user: str, uuid: str) -> None:
        async with self._turn(user, uuid, SHUTDOWN):
            self._get(user, uuid)
            if uuid in self._active:
                driver = self.lifecycle.command_driver(uuid, f"a shutdown of server {uuid}")
                # The guest powers off by itself: what it does from here to its end is lost.
                await self.lifecycle.fold_guest_io(uuid)
                await driver.powerdown(uuid)

    async def reset(self, user: str, uuid: str) -> None:
        async with self._turn(user, uuid, RESET):
            self._get(user, uuid)
            if uuid not in self._active:
                raise BusyError(f"Server {uuid} is not active and cannot be reset")
            await self.lifecycle.command_driver(uuid, f"a reset of server {uuid}").reset(uuid)

    async def destroy(self, user: str, uuid: str) -> None:
        async with self._turn(user, uuid, DESTROY):
            self._get(user, uuid)
            if uuid in self._active:
                await self.lifecycle.stop_vm(uuid, f"a destroy of server {uuid}")
            # Destroying must work on a full disk too (the space reserve gives the WAL room).
            space_reserve.begin_freeing(self._engine, functools.partial(_delete_server, uuid))
        self.lifecycle.dumps.remove(uuid)
        await self.lifecycle.remove_run_dir(uuid)
        log.info("event=server_destroyed user=%s server=%s", user, uuid)

    # -- host maintenance ------------------------------------------------------------

    async def suspend_all(self) -> dict[str, str]:
        """Dump every active server (host maintenance). Returns, per server, `dumped` or why
        it could not be (it then runs on)."""
        outcome: dict[str, str] = {}
        for uuid in sorted(self._active):
            async with self.operations.turn(uuid, DUMP):
                if uuid not in self._active:
                    continue  # ended meanwhile
                try:
                    await self.lifecycle.dump_vm(uuid)
                except FailedError as error:
                    outcome[uuid] = error.message
                else:
                    outcome[uuid] = DUMPED
        return outcome

    async def drain(self, host: str) -> dict[str, str]:
        """Move every active server of `host` to other hosts (services/servers/server_moves.py)."""
        return await self.moves.drain(host)

    async def resume_all(self) -> dict[str, str]:
        """Restore every dumped server. Returns, per server, `active` or why it is not."""
        with self._engine.connect() as connection:
            rows = server_store.servers_with_status(connection, DUMPED)
        outcome: dict[str, str] = {}
        for row in rows:
            try:
                await self.start(row.user, row.uuid)
            except ApiError as error:
                outcome[row.uuid] = error.message
            else:
                outcome[row.uuid] = "active"
        return outcome

    # -- daemon start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt the VMs of active servers; reconcile those that ended meanwhile."""
        await self.lifecycle.recover()

    async def adopt_for_maintenance(self) -> dict[str, str]:
        """Hold the running VMs without a daemon (see ServerLifecycle.adopt_for_maintenance)."""
        return await self.lifecycle.adopt_for_maintenance()

    async def close(self) -> None:
        """Let go of every VM without stopping it: they keep running for the next daemon."""
        await self.lifecycle.close()
