"""Servers moved between hosts while they run: `openhosting-admin host drain HOST` empties a
host for maintenance by live migration (hypervisor/moves.py), one server at a time.

Each active server of the host goes, in its turn (no start, stop or set of it meanwhile),
to the host placement picks among the other online hosts with a driver here and room for
its cpu and mem. Its drives are mirrored to the target and its memory follows; the guest
runs on without a reboot and `started` is unchanged. Its NICs are made on the target before
the target's QEMU waits for the state (the same MACs, addresses and blocked ports: its
`server_nics` rows do not change) and removed from the source once it moved; a move that
fails removes them from the target. Only once the move succeeded are `servers.host` and
where its drives live updated (`settle_moved_drives`); a server that cannot move (no room
anywhere, a driver that cannot migrate, a shared drive another server writes too, a failure
half-way) is reported and left running where it was.

An encrypted drive moves as it is stored: its LUKS header (read as stored, not decrypted)
and its passphrase go to the target, whose QEMU opens the same container over the new file
before the ciphertext is mirrored into it (hypervisor/migration.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import typing
from pathlib import Path

from sqlalchemy import Engine

from openhosting.errors import ApiError, BusyError, FailedError, MissingError
from openhosting.hypervisor.driver import (
    HypervisorDriver,
    IncomingRequest,
    MigratingDriver,
    StartRequest,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.moves import MovedVm, move_vm
from openhosting.hypervisor.spec import NicSpec
from openhosting.model.server import ServerConfig
from openhosting.reverter import Reverter
from openhosting.services.cluster.hosts import Hosts
from openhosting.services.drives.drives import AttachableDrive, Drives
from openhosting.services.operations import MOVE
from openhosting.services.servers.server_lifecycle import ServerLifecycle
from openhosting.services.servers.vm_specs import build_vm_spec
from openhosting.storage.drive_storage import DriveBytes, DriveStorage
from openhosting.storage.luks import HEADER_SIZE, LuksError, LuksHeader
from openhosting.store import drives as drive_store
from openhosting.store import servers as server_store

log = logging.getLogger("openhosting.servers")

# A move's bound: mirroring each drive, then the memory's last round (generous for TCG).
MOVE_TIMEOUT = 600.0
MOVED = "moved"
MIGRATING_METHODS = (
    "prepare_incoming", "migrate_out", "finish_incoming", "abort_incoming",
    "cancel_migrate_out", "end_migrated",
)  # fmt: skip


def landing_path(drive: AttachableDrive, target_host: str) -> Path:
    """Where the target makes the file of `drive` that the migration fills, when every
    host's drives are this host's files (no agents hold drives: `drive.host` empty): beside
    the source's file, under another name."""
    return drive.path.with_name(f"{drive.path.name}.moving-to-{target_host}")


def settle_moved_drives(
    engine: Engine,
    moved: MovedVm,
    drives: list[AttachableDrive],
    slots: dict[str, str],
    target_host: str,
) -> None:
    """The drives of a server that moved live where the target's answer says it put them
    (`moved.target.drive_paths`, by slot): here, the landed file takes the drive's own name
    (the source's QEMU has ended, and the target's keeps its open file across the rename),
    and the drive's row names its new host. The one step the storage seam changes."""
    by_uuid = {drive.uuid: drive for drive in drives}
    for slot, landed in moved.target.drive_paths:
        drive = by_uuid[slots[slot]]
        os.replace(landed, drive.path)
        with engine.begin() as connection:
            drive_store.update_drive(connection, drive.uuid, host=target_host)


class ServerMoves:
    """Live moves of active servers between the hosts this daemon has a driver for."""

    def __init__(
        self,
        engine: Engine,
        lifecycle: ServerLifecycle,
        drives: Drives,
        hosts: Hosts | None,
        start_timeout: float,
        timeout: float = MOVE_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._lifecycle = lifecycle
        self._drives = drives
        self._hosts = hosts
        self._start_timeout = start_timeout  # the target's QEMU, until it waits for the state
        self._timeout = timeout

    def host_of(self, uuid: str) -> str:
        """The host whose driver runs the VM of active server `uuid`."""
        return self._lifecycle.placed.get(uuid) or self._lifecycle.drivers.local_name

    async def drain(self, host: str) -> dict[str, str]:
        """Move every active server of `host` to other hosts, one at a time. Per server:
        `moved TARGET`, or why it did not move (it runs on where it was). MissingError if
        no such host is registered."""
        if self._hosts is None or not self._hosts.known(host):
            raise MissingError(f"Host {host} is not registered")
        if served := await asyncio.to_thread(self._served_elsewhere, host):
            # A drain moves servers, not drives: these would stay, and the host with them.
            listed = ", ".join(f"drive {drive} to server {server}" for server, drive in served)
            raise BusyError(
                f"Host {host} serves drives over NBD to servers running on other hosts"
                f" ({listed}): stop those servers first, a drain does not move their drives"
            )
        outcome: dict[str, str] = {}
        for uuid in sorted(u for u in self._lifecycle.active if self.host_of(u) == host):
            async with self._lifecycle.operations.turn(uuid, MOVE):
                if uuid not in self._lifecycle.active or self.host_of(uuid) != host:
                    continue  # ended, or moved, meanwhile
                try:
                    target = await self.move(uuid)
                except (ApiError, HypervisorError) as error:
                    message = error.message if isinstance(error, ApiError) else str(error)
                    log.warning(
                        "event=server_not_moved server=%s host=%s error=%s", uuid, host, message
                    )
                    outcome[uuid] = message
                else:
                    outcome[uuid] = f"{MOVED} {target}"
        moved = sum(text.startswith(MOVED) for text in outcome.values())
        log.info("event=host_drained host=%s servers=%s moved=%s", host, len(outcome), moved)
        return outcome

    async def move(self, uuid: str) -> str:
        """Move the running VM of active server `uuid` to another host (its turn held by the
        caller); the target host's name. On failure it runs where it was, nothing changed."""
        assert self._hosts is not None
        with self._engine.connect() as connection:
            row = server_store.get_server(connection, uuid)
        if row is None:
            raise MissingError(f"Server {uuid} could not be found")
        config = row.config
        source_host = self.host_of(uuid)
        source = _migrating(self._lifecycle.drivers.of(row.host), source_host)
        status = source.status(uuid)
        if status is None:
            raise FailedError(f"Server {uuid} has no VM held on host {source_host}")
        drives = [self._drives.attachable(row.user, a.drive) for a in config.drives]
        for drive in drives:
            if drive.generation:
                continue  # a standard drive: the target's own file, or a copy there (below)
            if drive.host and drive.host != source_host:
                raise FailedError(
                    f"Server {uuid} uses drive {drive.uuid} of host {drive.host} over NBD:"
                    " a server with drives on other hosts is not moved (stop it, and start"
                    " it again where it should run)"
                )
        copied = {a.slot: a.drive for a in config.drives if a.media != "cdrom"}
        await asyncio.to_thread(self._check_unshared, uuid, drives, copied)
        target_host = self._hosts.place_moved_server(
            config.cpu, config.mem, source_host, self._lifecycle.drivers.names()
        )
        target_key = "" if target_host == self._lifecycle.drivers.local_name else target_host
        source_key = "" if source_host == self._lifecycle.drivers.local_name else source_host
        target = _migrating(self._lifecycle.drivers.of(target_key), target_host)
        networks = self._lifecycle.networks
        async with Reverter() as revert:
            # The target's QEMU opens its NICs' links as it starts to wait for the state.
            nics = await networks.attach_on(uuid, config, target_key) if config.nics else ()
            revert.add(functools.partial(networks.detach_on, uuid, target_key))
            request = await self._incoming(
                uuid, config, row.vnc_display, drives, copied, target, target_host,
                status.started, nics,
            )  # fmt: skip
            await self._lifecycle.fold_guest_io(uuid)  # what the source QEMU counted, kept
            moved = await move_vm(source, target, request, self._timeout)
            revert.success()
        # Done: the VM runs on the target. From here on only the records follow it.
        await self._close_vnc_overlay(uuid, row.vnc_display)  # the source host's
        self._lifecycle.placed.pop(uuid, None)
        if target_key:
            self._lifecycle.placed[uuid] = target_key
        with self._engine.begin() as connection:
            server_store.update_server(connection, uuid, host=target_key)
            drive_store.reset_guest_io_marks(connection, uuid)  # the target counts from 0
        try:
            if any(drive.host for drive in drives):  # the drives are their hosts' own
                await self._settle_on_hosts(moved, drives, copied, target_host)
            else:
                await asyncio.to_thread(
                    settle_moved_drives, self._engine, moved, drives, copied, target_host
                )
        except OSError as error:
            raise FailedError(
                f"Server {uuid} moved to {target_host}, but its drives' files could not be"
                f" settled there: {error}"
            ) from error
        await self._leave_source_network(uuid, config, row.vnc_display, source_key)
        await networks.follow_move(uuid, config)
        log.info("event=server_moved server=%s from=%s to=%s", uuid, source_host, target_host)
        return target_host

    async def _settle_on_hosts(
        self,
        moved: MovedVm,
        drives: list[AttachableDrive],
        slots: dict[str, str],
        target_host: str,
    ) -> None:
        """The drives of a server that moved are the files the target made in its own drive
        directory: each row names the target, and the source's file is removed (its QEMU
        has ended). A source that cannot remove it leaves it, logged (the row is the truth)."""
        by_uuid = {drive.uuid: drive for drive in drives}
        for slot, _landed in moved.target.drive_paths:
            drive = by_uuid[slots[slot]]
            with self._engine.begin() as connection:
                drive_store.update_drive(connection, drive.uuid, host=target_host)
            try:
                await self._drives.storages.of(drive.host).destroy(drive.uuid, drive.tier)
            except ApiError as error:
                log.error(
                    "event=drive_bytes_left drive=%s host=%s error=%s",
                    drive.uuid, drive.host, error.message,
                )  # fmt: skip

    def _served_elsewhere(self, host: str) -> list[tuple[str, str]]:
        """(server, drive) of each drive of `host` attached over NBD to an active server
        running on another host."""
        local = self._lifecycle.drivers.local_name
        with self._engine.connect() as connection:
            rows = [
                row
                for row in server_store.servers_with_status(connection, "active")
                if (row.host or local) != host
            ]
            wanted = {attachment.drive for row in rows for attachment in row.config.drives}
            hosts = drive_store.drive_hosts(connection, wanted)
        return sorted(
            (row.uuid, attachment.drive)
            for row in rows
            for attachment in row.config.drives
            if hosts.get(attachment.drive) == host
        )

    def _check_unshared(
        self, uuid: str, drives: list[AttachableDrive], copied: dict[str, str]
    ) -> None:
        """FailedError for a shared drive of `copied` that another server holds too: its
        copy would miss that server's writes, and the two would part ways."""
        for drive in drives:
            if drive.exclusive or drive.uuid not in copied.values():
                continue
            with self._engine.connect() as connection:
                claims = drive_store.claims_on(connection, drive.uuid)
            others = sorted({c.holder for c in claims if c.kind == "guest" and c.holder != uuid})
            if others:
                raise FailedError(
                    f"Drive {drive.uuid} of server {uuid} is shared with server"
                    f" {', '.join(others)}, which writes it too: a live migration cannot copy"
                    " a drive another server writes meanwhile"
                )

    async def _luks_header(self, drive: AttachableDrive) -> tuple[bytes, int]:
        """`stored_luks_header` of encrypted `drive`, from the host that holds it."""
        storage = self._drives.storages.of(drive.host)
        return await stored_luks_header(storage, drive.uuid, drive.tier)

    def _landed(self, drive: AttachableDrive, target_host: str) -> AttachableDrive:
        """`drive` as the target opens the copy it makes: beside the source's file when all
        drives are this host's files; else the target's own file of it (an agent finds it by
        the drive's UUID and tier, this host in its own directory)."""
        if not drive.host:
            return dataclasses.replace(drive, path=landing_path(drive, target_host))
        path = self._drives.storages.of(target_host).disk_path(drive.uuid, drive.tier)
        return dataclasses.replace(drive, path=path, host=target_host)

    async def _drive_bytes(self, drive: AttachableDrive, payload_offset: int = 0) -> int:
        """The size of the copy of a drive: its file's, or where its host holds it
        elsewhere, its row's (a raw drive's file is exactly its size, an encrypted one's
        its payload's offset more)."""
        if not drive.host or self._drives.storages.is_local(drive.host):
            return await asyncio.to_thread(os.path.getsize, drive.path)
        with self._engine.connect() as connection:
            row = drive_store.get_drive(connection, drive.uuid)
        if row is None:
            raise MissingError(f"Drive {drive.uuid} could not be found")
        return row.size + payload_offset

    async def _incoming(
        self,
        uuid: str,
        config: ServerConfig,
        display: int | None,
        drives: list[AttachableDrive],
        copied: dict[str, str],
        target: HypervisorDriver,
        target_host: str,
        started: float,
        nics: tuple[NicSpec, ...] = (),
    ) -> IncomingRequest:
        """The request that prepares the target: the server's VM as the target runs it,
        the drives of `copied` (slot → drive: all but CD-ROMs, which stay where they are)
        copied into landing files."""
        by_uuid = {drive.uuid: drive for drive in drives}
        landed = [
            self._landed(drive, target_host) if drive.uuid in copied.values() else drive
            for drive in drives
        ]
        # A standard drive of another host than the target: a copy in the target's image
        # cache, as a start there would open (services/drives/standard_copies.py).
        copies = self._lifecycle.copies
        cached = copies.to_copy(target_host, drives) if copies is not None else []
        for drive in cached:
            assert copies is not None
            await copies.provide(uuid, target_host, drive)
        plan = build_vm_spec(
            uuid,
            config,
            landed,
            run_dir=target.run_dir(uuid),
            host=self._lifecycle.host_settings(target_host),
            display=display,
            nics=nics,
            cached={drive.uuid: drive.generation for drive in cached},
        )
        headers: dict[str, tuple[bytes, int]] = {
            slot: await self._luks_header(by_uuid[drive])
            for slot, drive in copied.items()
            if by_uuid[drive].passphrase is not None
        }
        sizes = {
            slot: await self._drive_bytes(by_uuid[drive], headers.get(slot, (b"", 0))[1])
            for slot, drive in copied.items()
        }
        vnc = self._lifecycle.vnc.credentials(uuid, config, display)
        start = StartRequest(
            dataclasses.replace(plan.spec, incoming=True),
            secrets=plan.secrets,
            vnc_password=vnc.password,
            vnc_names=vnc.names,
            cpu_mhz=config.cpu,
            timeout=self._start_timeout,
        )
        # The passphrases go as a start's do (`plan.secrets`): the target's QEMU opens the
        # same LUKS header with them, over the ciphertext the source mirrors to it.
        drive_headers = tuple((slot, header) for slot, (header, _offset) in headers.items())
        return IncomingRequest(
            start, tuple(sizes.items()), started=started, drive_headers=drive_headers
        )

    async def _close_vnc_overlay(self, uuid: str, display: int | None) -> None:
        """The VNC overlay is the network's of the VM's host: the source's goes first."""
        if display is None:
            return
        try:
            await self._lifecycle.vnc.close_overlay(uuid)
        except (FailedError, OSError) as error:  # the guest runs on: its VNC follows below
            log.warning("event=vnc_overlay_close_failed server=%s error=%s", uuid, error)

    async def _leave_source_network(
        self, uuid: str, config: ServerConfig, display: int | None, source: str
    ) -> None:
        """The VM runs on its new host: its NICs leave the source host (their addresses stay
        the server's) and its VNC overlay is made on the new one. A failure here is logged:
        the guest runs on, and the source's leftover links go at its network's next
        reconcile."""
        if config.nics:
            try:
                await self._lifecycle.networks.detach_on(uuid, source)
            except (FailedError, OSError) as error:
                log.warning(
                    "event=moved_nics_left server=%s host=%s error=%s",
                    uuid, source or "here", error,
                )  # fmt: skip
        if display is not None:
            try:
                await self._lifecycle.vnc.open_overlay(uuid, config, display)
            except (FailedError, OSError) as error:
                log.warning("event=vnc_overlay_open_failed server=%s error=%s", uuid, error)


async def stored_luks_header(storage: DriveStorage, drive: str, tier: str) -> tuple[bytes, int]:
    """The leading bytes of encrypted `drive`'s file up to its payload, as `storage` holds
    them (no key: the LUKS header and key material, not decrypted), trailing zeros cut (the
    target's new file is zeros there); and the payload's offset. FailedError if it is no
    LUKS1 container."""
    head = await _read_stored(storage, drive, tier, HEADER_SIZE)
    try:
        offset = LuksHeader.unpack(head).payload_offset
    except LuksError as error:
        raise FailedError(f"Drive {drive} cannot be moved: {error}") from error
    return (await _read_stored(storage, drive, tier, offset)).rstrip(b"\0"), offset


async def _read_stored(storage: DriveStorage, drive: str, tier: str, count: int) -> bytes:
    """The first `count` bytes of `drive` as `storage` stores them."""
    read = storage.open_read(DriveBytes(drive, tier), 0, count, lambda: None)
    try:
        await read.begin()
        data = b"".join([bytes(chunk) async for chunk in read.chunks()])
    finally:
        read.close()
    if len(data) != count:
        raise FailedError(f"Drive {drive}: {len(data)} of its {count} header bytes read")
    return data


def _migrating(driver: HypervisorDriver, host: str) -> MigratingDriver:
    """`driver` as one that moves VMs; FailedError naming `host` when it cannot."""
    if not all(hasattr(driver, name) for name in MIGRATING_METHODS):
        raise FailedError(f"Host {host}'s hypervisor driver cannot move VMs")
    return typing.cast(MigratingDriver, driver)
