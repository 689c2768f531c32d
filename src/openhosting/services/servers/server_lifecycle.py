"""The VMs of servers: starting one, changing one while it runs, reading its live figures,
and what happens when it ends; at daemon start, adopting those a previous daemon left running.

The database says what a server should be; whether its VM runs, and whether it is paused, is
the hypervisor driver's to say (hypervisor/driver.py): the servers with a VM are held here in
`active` (with their owner), and the driver's events tell what happens to their VMs. When a
VM ends for any reason, `vm_exited` applies the rules: a persistent server becomes `stopped`
(or `dead` after a crash), a non-persistent one is destroyed; its drives, addresses and VNC
overlay are released. A VM that ends because its state was saved (`dump_vm`, for host
maintenance) is the exception: its server, persistent or not, is `dumped` and keeps its drives
claimed (their content must not change under the saved memory) until `start_vm` restores it.
Callers (the server service) check ownership, claim the drives and take the server's turn
(`operations`, by `SERVER_RULES`) around these steps.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.config import Config
from openhosting.errors import FailedError, FullError, UnavailableError
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import (
    ENDING_TIMEOUT,
    BlockStats,
    HypervisorDriver,
    StartRequest,
    VmEnd,
    VmEvent,
    VmEventKind,
    VmState,
    VmStatus,
    open_driver,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import HostVmSettings
from openhosting.model.server import ServerConfig
from openhosting.network.links import Counters
from openhosting.reverter import Reverter
from openhosting.services.cluster.host_drivers import HostDrivers
from openhosting.services.cluster.hosts import Hosts
from openhosting.services.cluster.node_operations import NodeOperations
from openhosting.services.drives.drive_exports import DriveExports
from openhosting.services.drives.drives import AttachableDrive
from openhosting.services.drives.guest_io import fold_guest_io
from openhosting.services.drives.standard_copies import StandardCopies
from openhosting.services.events import EventBus
from openhosting.services.operations import DUMPED_END, SERVER_RULES, STOP, Operations
from openhosting.services.servers.server_dumps import ServerDumps
from openhosting.services.servers.server_info import LiveFigures
from openhosting.services.servers.server_logs import ServerLogs
from openhosting.services.servers.server_network import ServerNetworks
from openhosting.services.servers.vm_specs import build_vm_spec
from openhosting.services.servers.vnc import ServerVnc
from openhosting.store import drives as drive_store
from openhosting.store import servers as server_store
from openhosting.store.records import ServerRecord

log = logging.getLogger("openhosting.servers")

# How often what running guests did to their drives reaches the drives' counters. A VM that
# ends by itself (guest power-off, crash) takes the I/O since the last fold with it; a stop,
# destroy or daemon stop folds first.
GUEST_IO_FOLD_SECONDS = 30.0
GUEST_IO_QUERY_SECONDS = 2.0
# A guest that powered itself off is held (paused) by its driver until the handler returns or
# ENDING_TIMEOUT passes: its last counters may take longer to ask for than a running one's
# (a busy host answered after the 2 s above, and the I/O since the last fold was lost).
POWERED_OFF_QUERY_SECONDS = ENDING_TIMEOUT - 1.0

# Saving or restoring a guest's memory: a few seconds per GiB on a disk, generous for slow ones.
STATE_TIMEOUT = 300.0
# What QEMU says when the host refuses the guest's memory (`mem` beyond what the kernel will
# lend: with one host nothing is refused before, its memory being overcommitted as drives are).
GUEST_MEMORY_REFUSED = "cannot set up guest memory"
DUMPED = "dumped"


class ServerLifecycle:
    """The running VMs of this daemon's servers."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        networks: ServerNetworks,
        events: EventBus | None = None,
        hosts: Hosts | None = None,
        nodes: NodeOperations | None = None,
    ) -> None:
        self._engine = engine
        self._events = events if events is not None else EventBus()
        self.config = config
        self._settings = config.hypervisor
        self._networks = networks
        self.networks = networks  # the servers' NICs, on the host of each VM
        self.logs = ServerLogs(config)
        # This host's driver; the VMs of hosts with agents go through `drivers` too.
        self.driver = open_driver(config)
        self.hosts = hosts  # the hosts table: where servers are placed, agents' heartbeats
        self.drivers = HostDrivers(config.host_name, self.driver)
        self.drivers.listen(self._on_host_event)
        # The host of each server last started (or adopted) on a host with an agent: where
        # its VM, run directory, serial log and NICs are. Others are this host's.
        self.placed: dict[str, str] = {}
        networks.remote = self.drivers.networks
        networks.host_of = lambda uuid: self.placed.get(uuid, "")
        # The agent hosts a watch found unreachable: their servers are adopted again when
        # their agent answers (`watch_agents`).
        self._agents_down: set[str] = set()
        # The hosts ("": this one) whose network reconcile was left for the next look of
        # the watch: an operation had a server in hand whose NICs may be there.
        self._networks_due: set[str] = set()
        # Told the name of each agent host just connected, or back after a watch found it
        # down (its drive files are reconciled then: services/drives/drive_orphans.py).
        self.agent_listeners: list[Callable[[str], None]] = []
        # The owner of every active server (its VM held by the driver); only this class
        # adds and removes entries.
        self.active: dict[str, str] = {}
        # The servers' VNC: displays, addresses, overlays, credentials.
        self.vnc = ServerVnc(config, networks, self.driver)
        self.vnc.driver_on = self.drivers.of  # its display's port is probed on its host
        self.dumps = ServerDumps.of_state(config.state_path, config.platform_key_path)
        # What runs on each server: the server service's actions, and DUMPED_END while a VM
        # ends because its state was saved (`vm_exited` then keeps the server `dumped`).
        # With `nodes` (PostgreSQL), the other API nodes' count too.
        self.operations = Operations("Server", SERVER_RULES, nodes)
        # The drives of servers running on another host than theirs, served over NBD.
        self.exports = DriveExports(self.drivers, self.host_down)
        # The standard drives' copies in the agents' image caches (set by the platform, which
        # has the drives' storages; none: a standard drive is another host's drive).
        self.copies: StandardCopies | None = None

    def driver_of(self, uuid: str) -> HypervisorDriver:
        """The driver of the host that runs (or last ran) the VM of `uuid`; FullError naming
        the host when its agent is not connected here."""
        return self.drivers.of(self.placed.get(uuid, ""))

    def host_offline(self, host: str) -> bool:
        """Whether `host` was offline at the last look (its heartbeat older than
        `host.offline_seconds`, whichever node beat for it): what info says."""
        return self.hosts is not None and host in self.hosts.offline

    def host_down(self, host: str) -> bool:
        """Whether `host` (another host's name) is offline, or its agent did not answer this
        node's last look: its servers' commands wait until it is back."""
        if not host or host == self.drivers.local_name:
            return False
        return host in self._agents_down or self.host_offline(host)

    def command_driver(self, uuid: str, what: str) -> HypervisorDriver:
        """The driver for `what`, a command on the VM of `uuid`: UnavailableError (503
        `failed`) naming the host when it is down (the command would fail or wait for the
        agent's time-outs), FullError when its agent is not connected here."""
        host = self.placed.get(uuid, "")
        if self.host_down(host):
            raise UnavailableError(
                f"Host {host} is offline or its agent does not answer: {what} must wait"
                " until it is back (the server's info shows what was last known)"
            )
        return self.drivers.of(host)

    async def stop_vm(self, uuid: str, what: str) -> None:
        """End the VM of `uuid` for `what` (a stop or a destroy, as `command_driver` names
        it): QEMU quits, killed after the stop timeout; its guest's I/O is counted first,
        since QEMU's counters end with it."""
        driver = self.command_driver(uuid, what)
        await self.fold_guest_io(uuid)
        await driver.stop(uuid, self._settings.stop_timeout)

    def run_dir(self, uuid: str) -> Path:
        return self.driver_of(uuid).run_dir(uuid)

    def status(self, uuid: str) -> str | None:
        """`active` or `paused` as the hypervisor says, for a server with a VM; else None."""
        if uuid not in self.active:
            return None
        vm = self.driver_of(uuid).status(uuid)
        if vm is None:
            return None
        return "paused" if vm.state == VmState.PAUSED else "active"

    def statuses(self) -> dict[str, str]:
        """The status of every server with a VM (see `status`)."""
        return {uuid: status for uuid in list(self.active) if (status := self.status(uuid))}

    def host_settings(self, host: str) -> HostVmSettings:
        """What `host` ("": this one) gives every VM (its VNC address, the network
        namespace of its network driver)."""
        host = "" if host == self.drivers.local_name else host
        return self.drivers.of(host).host_settings(
            vnc_listen=self.vnc.listen_address(host), netns=self._networks.namespace_on(host)
        )

    # -- start -----------------------------------------------------------------------

    async def start_vm(
        self,
        user: str,
        uuid: str,
        config: ServerConfig,
        drives: list[AttachableDrive],
        display: int | None,
        restore: bool = False,
        host: str | None = None,
    ) -> None:
        """Start the VM of `uuid`, whose drives are claimed and VNC `display` picked; the
        server is `active` once this returns. Every step is undone if a later one fails.
        With `restore`, the VM runs on from its dump instead of booting; the dump is removed
        once it runs. `host`: where `place` put it (None: placed here)."""
        begun = time.monotonic()
        host = self.place(config) if host is None else host
        running_on = host or self.drivers.local_name
        # Standard drives of other hosts come from the image cache of the VM's host; the
        # other drives of other hosts are served over NBD.
        copied = self.copies.to_copy(running_on, drives) if self.copies is not None else []
        served = [drive for drive in drives if drive.uuid not in {d.uuid for d in copied}]
        elsewhere = self.exports.elsewhere(uuid, running_on, served)
        driver = self.drivers.of(host)
        async with Reverter() as revert:
            # Placed first: the NICs are made on the host, and released there.
            self._place_on(uuid, host)
            for drive in copied:  # kept if the start fails: the next one uses them
                assert self.copies is not None
                await self.copies.provide(uuid, running_on, drive)
            # The drives of other hosts served to this one first: its QEMU opens them.
            cdroms = {a.drive for a in config.drives if a.media == "cdrom"}
            exported = [(drive, drive.uuid in cdroms) for drive in elsewhere]
            sources = await self.exports.open(uuid, running_on, exported, revert)
            nics = await self._networks.acquire(user, uuid, config, host)
            revert.add(lambda: self._networks.release(uuid))
            plan = build_vm_spec(
                uuid,
                config,
                drives,
                run_dir=driver.run_dir(uuid),
                host=self.host_settings(host),
                display=display,
                nics=nics,
                nbd=sources,
                cached={drive.uuid: drive.generation for drive in copied},
            )
            spec = dataclasses.replace(plan.spec, incoming=True) if restore else plan.spec
            vnc = self.vnc.credentials(uuid, config, display)
            try:
                request = StartRequest(
                    spec,
                    secrets=plan.secrets,
                    vnc_password=vnc.password,
                    vnc_names=vnc.names,
                    cpu_mhz=config.cpu,
                    timeout=STATE_TIMEOUT if restore else self._settings.start_timeout,
                )
                vm = await driver.start(
                    request, restore=self.dumps.source(uuid) if restore else None
                )
            except HypervisorError as error:
                log.warning("event=server_start_failed server=%s error=%s", uuid, error)
                if GUEST_MEMORY_REFUSED in str(error):
                    # The host cannot give the guest its memory (more than the host has, with
                    # what runs there): what the platform lacks, as a full disk is, not a fault.
                    raise FullError(
                        f"Host {host or self.drivers.local_name} has not {config.mem} MB of"
                        f" memory for server {uuid}: {error}"
                    ) from error
                raise
            # Whatever fails from here on must not leave a VM running that nobody holds.
            self.active[uuid] = user
            revert.add(lambda: driver.kill(uuid, self._settings.stop_timeout))
            # The VNC overlay is made by the network of the VM's host (an agent's too).
            if display is not None:
                await self.vnc.open_overlay(uuid, config, display)
                revert.add(lambda: self.vnc.close_overlay(uuid))
            started = int(time.time())
            with self._engine.begin() as connection:
                server_store.update_server(
                    connection, uuid, status="active", started_at=started, host=host
                )
            revert.success()
        if restore:
            await asyncio.to_thread(self.dumps.remove, uuid)  # used: the guest runs on
        log.info(
            "event=server_started user=%s server=%s restored=%s host=%s",
            user, uuid, str(restore).lower(), host or self.drivers.local_name,
        )  # fmt: skip
        for attachment in config.drives:
            self._events.publish(
                user, "drive", attachment.drive, "claimed", server=uuid, device=attachment.slot
            )
        self._events.publish(
            user, "server", uuid, "status", status="active", started=started,
            start_seconds=round(time.monotonic() - begun, 3),
        )  # fmt: skip
        if vm.state == VmState.PAUSED and vm.reason is not None:  # paused before anyone listened
            self._publish_pause(user, uuid, vm.reason)

    def place(self, config: ServerConfig) -> str:
        """The host a starting server goes to ("" for this one): placement's choice among
        the hosts with a driver here, the boot drive's host first."""
        if self.hosts is None or not self.drivers.remote:
            return ""  # one host: nothing to choose
        chosen = self.hosts.place_server(
            config.cpu, config.mem, boot_drive(config), self.drivers.names()
        )
        return "" if chosen == self.drivers.local_name else chosen

    def _place_on(self, uuid: str, host: str) -> None:
        if host:
            self.placed[uuid] = host
        else:
            self.placed.pop(uuid, None)

    # -- what the hypervisor tells -----------------------------------------------------

    async def _on_host_event(self, host: str, event: VmEvent) -> None:
        where = self.placed.get(event.server) or self.drivers.local_name
        if where != host:
            # A VM of this server on another host than its own (left by an older start):
            # not the server's; the watch and the start-up adoption deal with such VMs.
            log.warning(
                "event=vm_event_ignored server=%s kind=%s host=%s server_host=%s",
                event.server, event.kind, host, where,
            )  # fmt: skip
            return
        await self._on_event(event)

    async def _on_event(self, event: VmEvent) -> None:
        if event.kind == VmEventKind.EXITED:
            await self.vm_exited(event.server, event.how or VmEnd.SHUTDOWN)
        elif event.kind == VmEventKind.POWERED_OFF:
            # A guest's power-off: its last I/O counts.
            await self.fold_guest_io(event.server, POWERED_OFF_QUERY_SECONDS)
        elif (user := self.active.get(event.server)) is None:
            return  # a start or adoption under way tells its own status
        elif event.kind == VmEventKind.PAUSED:
            self._publish_pause(user, event.server, event.reason or VmState.PAUSED)
        elif event.kind == VmEventKind.RESUMED:
            self._events.publish(
                user, "server", event.server, "status", status="active", reason="resumed"
            )

    def _publish_pause(self, user: str, uuid: str, reason: str) -> None:
        """The hypervisor paused the VM of `uuid` (a full disk, say): tell its owner."""
        self._events.publish(user, "server", uuid, "status", status="paused", reason=reason)

    # -- while it runs ---------------------------------------------------------------

    async def reconfigure(self, uuid: str, current: ServerConfig, merged: ServerConfig) -> None:
        """Apply to the running VM of `uuid` what a `set` may change live: its CPU quota,
        its VNC password, the ports its NICs block."""
        if [nic.block for nic in merged.nics] != [nic.block for nic in current.nics]:
            await self._networks.block(uuid, merged)
        if merged.cpu != current.cpu:
            await self.driver_of(uuid).set_cpu(uuid, merged.cpu)
        if merged.vnc_password != current.vnc_password:
            await self.vnc.set_password(uuid, merged.vnc_password)

    async def live_figures(self, row: ServerRecord, config: ServerConfig) -> LiveFigures:
        """What the running VM of the server in `row` tells for its info."""
        uuid = row.uuid
        driver = self.driver_of(uuid)
        blockstats: dict[str, BlockStats] = {}
        down = self.host_down(self.placed.get(uuid, ""))
        if not down:  # not asked: no time-out's wait
            # The VM going away (or its host's agent) takes its counters with it.
            with contextlib.suppress(HypervisorError):
                blockstats = dict(await driver.blockstats(uuid))
        vm = driver.status(uuid)
        vnc_address, vnc_port = self.vnc.public_endpoint(uuid, row.vnc_display)
        return LiveFigures(
            started=int(row.started_at or (vm.started if vm is not None else 0)),
            nic0_address=self._networks.nic0_address(uuid, config),
            vnc_address=vnc_address,
            vnc_port=vnc_port,
            blockstats=blockstats,
            traffic=await self._traffic(uuid) if not down else Counters(),
        )

    async def _traffic(self, uuid: str) -> Counters:
        """The traffic of the NICs of `uuid`, counted on its host; none when that host's
        agent does not answer (as its drive counters: info shows what it can)."""
        try:
            return await self._networks.counters(uuid)
        except (HypervisorError, UnavailableError):
            return Counters()

    async def fold_guest_io(self, uuid: str | None = None, limit: float | None = None) -> None:
        """Add what the guest of `uuid` (or of every running VM) read and wrote since the
        last fold to its drives' I/O counters (see services/drives/guest_io.py); a monitor that does
        not answer within `limit` seconds (GUEST_IO_QUERY_SECONDS by default) is left out."""
        limit = GUEST_IO_QUERY_SECONDS if limit is None else limit
        servers = [uuid] if uuid in self.active else [] if uuid else list(self.active)
        # Every monitor asked at once: stuck ones cost one wait in all, not one wait each.
        answers = await asyncio.gather(*(self._guest_io_of(s, limit) for s in servers))
        readings = {server: stats for server, stats in answers if stats is not None}
        if readings:
            fold_guest_io(self._engine, readings)

    async def _guest_io_of(
        self, server: str, limit: float
    ) -> tuple[str, dict[str, BlockStats] | None]:
        """The I/O counters of the VM of `server`; None when its monitor does not answer."""
        try:
            # Short: a stop or destroy waits for it, and a stuck monitor must not hold them
            # (their own `quit` then times out and kills).
            async with asyncio.timeout(limit):
                return server, dict(await self.driver_of(server).blockstats(server))
        except (HypervisorError, TimeoutError):
            return server, None  # the VM is going away; the last fold holds what it did before

    async def fold_guest_io_every(self, interval: float = GUEST_IO_FOLD_SECONDS) -> None:
        """Fold the running guests' I/O every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.fold_guest_io()

    # -- saving a VM's state ------------------------------------------------------------

    async def dump_vm(self, uuid: str) -> None:
        """Save the running VM's memory and device state to its dump and end it: the server
        is `dumped` once this returns. If the state cannot be saved, the VM runs on."""
        if uuid not in self.active:
            raise FailedError(f"Server {uuid} is not active")
        begun = time.monotonic()
        driver = self.driver_of(uuid)
        await self.fold_guest_io(uuid)  # QEMU's counters end with it
        try:
            await driver.save_state(uuid, self.dumps.sink(uuid), timeout=STATE_TIMEOUT)
            await asyncio.to_thread(self.dumps.commit, uuid)
        except (HypervisorError, OSError) as error:
            await asyncio.to_thread(self.dumps.remove, uuid)
            with contextlib.suppress(HypervisorError):  # runs on, as if never asked
                await driver.resume(uuid)
            log.warning("event=server_dump_failed server=%s error=%s", uuid, error)
            raise FailedError(f"Server {uuid} could not be dumped: {error}") from error
        with self.operations.begin(uuid, DUMPED_END):
            await driver.stop(uuid, self._settings.stop_timeout)
        log.info(
            "event=server_dumped server=%s seconds=%.3f bytes=%s",
            uuid, time.monotonic() - begun, self.dumps.path(uuid).stat().st_size,
        )  # fmt: skip

    def discard_dump(self, uuid: str) -> bool:
        """The dumped server is stopped instead of restored: its saved state and claims go,
        and the stop rules apply (a non-persistent server is destroyed: True, and its run
        directory is the caller's to remove with `remove_run_dir`)."""
        self.dumps.remove(uuid)
        with self._engine.begin() as connection:
            row = server_store.get_server(connection, uuid)
            server_store.remove_guest_claims(connection, uuid)
            persistent = row is not None and row.config.persistent
            if persistent:
                server_store.update_server(connection, uuid, status="stopped")
            elif row is not None:
                server_store.delete_server(connection, uuid)
        if row is not None and not persistent:
            log.info("event=server_destroyed server=%s reason=dump_discarded", uuid)
            return True
        return False

    # -- end -------------------------------------------------------------------------

    async def vm_exited(self, uuid: str, how: VmEnd, started: bool = True) -> None:
        """The VM of `uuid` is gone: release its drives and apply the persistence rules.
        Not `started`: the VM (if any) of a start that never made its server active, whose
        API node died: what the start took is released, the server's status stays."""
        # Neither failing (the database away, too) stops what follows: the VM is gone, and
        # a server left in `active` here would be a ghost, never started again nor undone.
        try:
            await self.vnc.close_overlay(uuid)
        except (FailedError, OSError, SQLAlchemyError) as error:
            log.warning("event=vnc_overlay_close_failed server=%s error=%s", uuid, error)
        try:
            await self._networks.release(uuid)  # its taps, DHCP entries and addresses
        except (FailedError, OSError, SQLAlchemyError) as error:
            log.warning("event=network_release_failed server=%s error=%s", uuid, error)
        # The database first, and no await until the VM has left `active`: whoever sees the
        # server no longer active must also see its drives released.
        dumped = DUMPED_END in self.operations.in_flight(uuid)
        running_on = self.placed.get(uuid) or self.drivers.local_name
        exported_from: set[str] = set()
        try:
            with self._engine.begin() as connection:
                row = server_store.get_server(connection, uuid)
                persistent = row is not None and row.config.persistent
                if row is not None:
                    drives = [attachment.drive for attachment in row.config.drives]
                    hosts = drive_store.drive_hosts(connection, drives).values()
                    exported_from = {host for host in hosts if host != running_on}
                if not dumped:
                    server_store.remove_guest_claims(connection, uuid)
                if not started:
                    self.vnc.release(connection, uuid)
                    log.warning("event=server_start_undone server=%s", uuid)
                elif dumped and row is not None:
                    # Its drives stay claimed: what they hold belongs with the saved memory.
                    server_store.update_server(connection, uuid, status=DUMPED, started_at=None)
                    self.vnc.release(connection, uuid)
                    log.info("event=server_stopped server=%s status=%s", uuid, DUMPED)
                elif row is not None and not persistent:
                    server_store.delete_server(connection, uuid)
                    log.info("event=server_destroyed server=%s reason=vm_%s", uuid, how)
                elif row is not None:
                    status = "stopped" if how == VmEnd.SHUTDOWN else "dead"
                    server_store.update_server(connection, uuid, status=status, started_at=None)
                    self.vnc.release(connection, uuid)
                    log.info("event=server_stopped server=%s status=%s", uuid, status)
        finally:
            self.active.pop(uuid, None)
        # Its drives of other hosts are served no longer (a dumped server's too: its
        # restore exports them again).
        await self.exports.close(uuid, exported_from)
        if not started:
            self.placed.pop(uuid, None)
        elif dumped and row is not None:
            self._events.publish(row.user, "server", uuid, "status", status=DUMPED)
        elif row is not None:
            self._publish_exit(row.user, uuid, row.config, how)
        if started and not dumped and row is not None and not persistent:
            await self.remove_run_dir(uuid)

    async def remove_run_dir(self, uuid: str) -> None:
        """The server is destroyed: keep the last of its serial log, remove the rest."""
        try:
            driver = self.driver_of(uuid)
        except FullError as error:  # its host's agent is away: its run directory stays there
            log.warning("event=server_run_dir_kept server=%s error=%s", uuid, error)
            self.placed.pop(uuid, None)
            return
        try:
            # From a worker thread: an agent's host is asked for it over the wire.
            content = await asyncio.to_thread(driver.serial_log, uuid)
            await asyncio.to_thread(self.logs.keep, uuid, content)
        except (OSError, HypervisorError) as error:
            log.warning("event=server_log_keep_failed server=%s error=%s", uuid, error)
        driver.forget(uuid)
        self.placed.pop(uuid, None)

    def _publish_exit(self, user: str, uuid: str, config: ServerConfig, how: VmEnd) -> None:
        for attachment in config.drives:
            self._events.publish(
                user, "drive", attachment.drive, "released", server=uuid, device=attachment.slot
            )
        if not config.persistent:
            self._events.publish(user, "server", uuid, "destroyed", reason=f"vm_{how}")
        else:
            status = "stopped" if how == VmEnd.SHUTDOWN else "dead"
            self._events.publish(user, "server", uuid, "status", status=status, reason=how)

    # -- daemon start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """Connect to the hosts' agents; re-adopt the VMs of active servers; reconcile those
        that ended meanwhile. A server whose host's agent cannot be reached is left as it is
        (`active`, its VM unknown) until the agent answers (`watch_agents`); one that an
        operation under way has in hand (another node's move or start) is left to it, and
        the network reconciles it holds up are done by the watch (`_recover_network_of`)."""
        reached = await self.drivers.connect_agents(self._engine)
        await self._record_hosts(reached)
        for host in reached:
            self._tell_agent_back(host)
        adopted: dict[str, ServerConfig] = {}
        under_way = self.operations.under_way()
        for row in await self._servers_to_adopt():
            uuid = row.uuid
            if uuid in under_way:
                # Another API node moves, stops or starts it (or this one, as a test does):
                # its VM is that operation's, on its source or on its target.
                log.info("event=server_adopt_left server=%s reason=operation_under_way", uuid)
                continue
            self._place_on(uuid, self._host_key(row.host))
            try:
                driver = self.driver_of(uuid)
            except FullError as error:
                log.warning("event=server_adopt_deferred server=%s error=%s", uuid, error)
                continue
            try:
                vm = await self._adopt(row)
            except HypervisorError as error:
                # A VM that runs but cannot be controlled cannot be left running unseen:
                # stop it, and the server is dead (its owner can start it again).
                log.warning("event=server_adopt_failed server=%s error=%s", uuid, error)
                vm = None
                await driver.stop_unheld(uuid, timeout=self._settings.stop_timeout)
            if vm is not None and uuid in self.active:
                config = row.config
                adopted[uuid] = config
                try:
                    # Placed again: threads may have been moved meanwhile, or placed by an
                    # older daemon with the quota on the whole process.
                    await driver.set_cpu(uuid, config.cpu)
                except (HypervisorError, OSError, ValueError) as error:
                    log.warning("event=cpu_quota_failed server=%s error=%s", uuid, error)
                if row.vnc_display is not None:
                    with contextlib.suppress(FailedError, OSError):
                        await self.vnc.open_overlay(uuid, config, row.vnc_display)
                log.info("event=server_adopted server=%s", uuid)
                continue
            if vm is None:
                await self.vm_exited(uuid, driver.how_ended(uuid))
        await self._stop_unowned_vms()
        running = {u: c for u, c in adopted.items() if u in self.active}
        self._networks_due.update(
            await self._networks.recover(running, self.operations.under_way())
        )
        for host in reached:  # once the VMs are adopted: whose exports still serve a VM
            await self._reconcile_exports(host)

    def agents_up(self) -> list[str]:
        """The agent hosts connected here whose agent answered the last watch."""
        return [host for host in self.drivers.remote if host not in self._agents_down]

    async def agent_reports(self) -> Mapping[str, HostCapacity]:
        """What the agents up report of their hosts now: host → capacity (a heartbeat's)."""
        return await self.drivers.capacities(self.agents_up())

    async def _record_hosts(self, hosts: list[str]) -> None:
        """The hosts of agents just connected, online with what they report, at once: a
        drive or server may be placed there without waiting for the next heartbeat."""
        if self.hosts is not None and hosts:
            reports = await self.drivers.capacities(hosts)
            await asyncio.to_thread(self.hosts.heartbeat, reports)

    async def watch_agents(self) -> None:
        """One look at every agent host. One that does not answer is down (its servers'
        calls fail, naming it); when it answers again, or is reached for the first time,
        the VMs of its active servers are adopted again (a restarted agent holds none) and
        those that ended meanwhile reconciled, as at a daemon's start. Whatever an
        operation under way has in hand is left to it (`Operations.under_way`); a host's
        network reconcile that waited for one is done at the first look after it."""
        reached = await self.drivers.connect_agents(self._engine)
        await self._record_hosts(reached)
        for host in reached:
            await self._adopt_on(host, None)
            await self._agent_back(host)
        unheld = await self._look_at_agents()
        await self._undo_dead_starts(unheld)
        for host in sorted(self._networks_due - self._agents_down):
            await self._recover_network_of(host)  # left at a previous look: once more

    async def _look_at_agents(self) -> dict[str, set[str]]:
        """Ask each connected agent which VMs run unheld on its host: none answering, it
        is down; answering again, its VMs are adopted again and its host reconciled.
        Returns, per host that answered, the VMs it ran unheld that were not adopted."""
        left: dict[str, set[str]] = {}
        for host, driver in list(self.drivers.remote.items()):
            try:
                unheld = set(await driver.unheld())
            except HypervisorError as error:
                if host not in self._agents_down:
                    log.warning("event=host_agent_down host=%s error=%s", host, error)
                self._agents_down.add(host)
                continue
            if unheld:  # asked only then: the other nodes' operations are a query
                # A move's target VM waits unheld for its state until the move ends: that
                # is the move's, not an agent restarted (whose network reconcile would
                # remove the NICs made there for the VM on its way in).
                unheld -= self.operations.under_way()
            if host in self._agents_down:
                self._agents_down.discard(host)
                log.info("event=host_agent_back host=%s", host)
                await self._adopt_on(host, None)
                await self._agent_back(host)
            elif unheld:  # restarted between two looks: its VMs run on, held by nobody
                await self._adopt_on(host, unheld)
                self._tell_agent_back(host)
            left[host] = unheld - set(self.active)
        return left

    async def _undo_dead_starts(self, unheld: Mapping[str, set[str]]) -> None:
        """Undo the starts whose API node died (SIGKILL, its host lost) before their server
        was active: nobody will answer them, yet the server's drives stay claimed by it
        (its next start `409 in use`) and the VM the agent ran for it (if it got that far)
        runs on, held by the agent, where no daemon's start-up finds it; an agent that died
        in a start leaves a QEMU that its next run finds `unheld` (the start failed, 503)
        and that the adoption leaves alone (no active server), while the server may be
        started again, a second guest on its drives. Such a start is one
        no operation has in hand any longer (its node's lease ran out) of a server neither
        `active` nor `dumped` that holds claims or has a VM on an agent's host: its VM is
        stopped and its claims, display, NICs and exports released, its status left as it
        was before the start, in a turn of this node's own on the server."""
        vms: dict[str, tuple[str, HypervisorDriver, bool]] = {}  # host, driver, held
        for host, driver in list(self.drivers.remote.items()):
            if host in self._agents_down or host not in unheld:
                continue
            try:
                holding = await driver.held_on_host()
            except HypervisorError:
                continue  # its agent went meanwhile: the next look
            vms.update({server: (host, driver, False) for server in unheld[host]})
            vms.update({server: (host, driver, True) for server in holding})
        with self._engine.connect() as connection:
            candidates = server_store.claimants_not_running(connection)
            candidates |= {
                uuid for uuid in vms.keys() - self.active
                if (row := server_store.get_server(connection, uuid)) is None
                or row.status not in ("active", DUMPED)
            }  # fmt: skip
        candidates -= set(self.active)
        if candidates:
            candidates -= self.operations.under_way()
        for uuid in sorted(candidates):
            operation = self.operations.begin_if_idle(uuid, STOP)
            if operation is None:
                continue  # begun meanwhile: that operation's
            with operation:
                with self._engine.connect() as connection:  # read again in the turn
                    row = server_store.get_server(connection, uuid)
                if row is not None and row.status in ("active", DUMPED):
                    continue  # its start got through meanwhile
                if uuid in vms:
                    host, driver, held = vms[uuid]
                    log.warning("event=server_orphan_stopped server=%s host=%s", uuid, host)
                    # Placed nowhere meanwhile: its EXITED is ignored here, as on every
                    # other node (the persistence rules are not for a start undone).
                    self.placed.pop(uuid, None)
                    with contextlib.suppress(HypervisorError):  # gone already: as well
                        if held:
                            await driver.kill(uuid, self._settings.stop_timeout)
                        else:
                            await driver.stop_unheld(uuid, self._settings.stop_timeout)
                    self._place_on(uuid, host)  # its NICs and exports are released there
                await self.vm_exited(uuid, VmEnd.SHUTDOWN, started=False)

    async def _agent_back(self, host: str) -> None:
        """`host`'s agent is back, its VMs adopted again: its listeners told, its exports
        of drives to servers whose VMs do not run ended."""
        self._tell_agent_back(host)
        await self._reconcile_exports(host)

    async def _reconcile_exports(self, host: str) -> None:
        with self._engine.connect() as connection:
            # Active in the database: held here, or on a host whose agent is away.
            active = {row.uuid for row in server_store.servers_with_status(connection, "active")}
        kept = active | set(self.active) | self.operations.under_way()
        await self.exports.reconcile(host, keep=kept.__contains__)

    def _tell_agent_back(self, host: str) -> None:
        for listener in self.agent_listeners:
            listener(host)

    async def watch_agents_every(self, interval: float) -> None:
        """`watch_agents` every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.watch_agents()
            except Exception as error:  # a busy database: look again next time
                log.warning("event=host_agent_watch_failed error=%s", error)

    async def _adopt_on(self, host: str, only: set[str] | None) -> None:
        """Adopt the VMs of the active servers of `host` (those in `only`, if given)."""
        with self._engine.connect() as connection:
            rows = [
                row
                for row in server_store.servers_with_status(connection, "active")
                if row.host == host and (only is None or row.uuid in only)
            ]
        driver = self.drivers.of(host)
        under_way = self.operations.under_way()
        for row in rows:
            uuid = row.uuid
            if uuid in under_way:
                continue  # a start, stop, destroy or move under way says what becomes of it
            self._place_on(uuid, host)
            try:
                vm = await self._adopt(row)
            except HypervisorError as error:
                log.warning("event=server_adopt_failed server=%s error=%s", uuid, error)
                vm = None
                with contextlib.suppress(HypervisorError):
                    await driver.stop_unheld(uuid, timeout=self._settings.stop_timeout)
            if vm is None:
                await self.vm_exited(uuid, driver.how_ended(uuid))
            else:
                log.info("event=server_adopted server=%s host=%s", uuid, host)
        await self._recover_network_of(host)

    async def _recover_network_of(self, host: str) -> None:
        """The network of `host` ("": this one), whose VMs were just adopted again, keeps
        what its running servers use (a restarted agent's network knows nothing yet) and
        removes the rest; left for the watch's next look while an operation has in hand a
        server whose NICs may be there (`Operations.under_way`)."""
        with self._engine.connect() as connection:
            running = {
                row.uuid: row.config
                for row in server_store.servers_with_status(connection, "active")
                if self._host_key(row.host) == host and row.uuid in self.active
            }
        try:
            done = await self._networks.recover_on(host, running, self.operations.under_way())
        except (FailedError, HypervisorError, OSError) as error:  # its agent gone again
            log.warning("event=network_reconcile_failed host=%s error=%s", host, error)
            return
        if done:
            self._networks_due.discard(host)
        else:
            self._networks_due.add(host)

    def _host_key(self, host: str) -> str:
        """`host` as `placed` and the drivers name it: "" for this one."""
        return "" if host == self.drivers.local_name else host

    async def adopt_for_maintenance(self) -> dict[str, str]:
        """For the admin tool when no daemon answers: hold the VMs of active servers as
        `recover` does, but never stop one it cannot control (a daemon may hold it) and leave
        networking as it is but for starting it. Returns why each one not held is not."""
        unreachable: dict[str, str] = {}
        for row in await self._servers_to_adopt():
            uuid = row.uuid
            try:
                vm = await self._adopt(row, timeout=3)
            except HypervisorError as error:
                self.active.pop(uuid, None)
                unreachable[uuid] = f"its VM cannot be controlled here ({error})"
                continue
            if vm is None:
                self.active.pop(uuid, None)
                unreachable[uuid] = "its VM does not run (the daemon reconciles it at start)"
        return unreachable

    async def _servers_to_adopt(self) -> list[ServerRecord]:
        """Start networking; the servers the database says are active, whose VMs a previous
        daemon left running (or that ended meanwhile)."""
        await self._networks.start()
        with self._engine.connect() as connection:
            return server_store.servers_with_status(connection, "active")

    async def _adopt(self, row: ServerRecord, timeout: float = 10.0) -> VmStatus | None:
        """Hold the VM of the server of `row` again (see `HypervisorDriver.adopt`). The server
        is in `active` first: its VM's events come as it is adopted."""
        self.active[row.uuid] = row.user
        return await self.driver_of(row.uuid).adopt(
            row.uuid, started=float(row.started_at or 0), timeout=timeout
        )

    async def _stop_unowned_vms(self) -> None:
        """A daemon killed between QEMU's start and the server's `active` (or its claims and
        the start) leaves a VM, or claims, that no active server owns: the start was never
        answered, so the VM is stopped and the claims released (a start later is a 500 and
        the drives stay `claimed` otherwise). Not those of a server that an operation under
        way has in hand (another node's start, a move's target waiting for its state)."""
        under_way = self.operations.under_way()
        for driver in self.drivers.all():
            for server in await driver.unheld():
                if server in under_way:
                    continue  # a move's target waiting for its state, a start's VM
                log.warning("event=server_orphan_stopped server=%s", server)
                await driver.stop_unheld(server, timeout=self._settings.stop_timeout)
        with self._engine.begin() as connection:
            # A dumped server has no VM and keeps its claims: its disks must not change.
            # Nor does an active one whose host's agent is away (adopted when it is back),
            # nor one that another node's start has claimed them for.
            kept = {
                row.uuid
                for status in (DUMPED, "active")
                for row in server_store.servers_with_status(connection, status)
            } | under_way
            released = server_store.remove_guest_claims_except(connection, set(self.active) | kept)
        if released:
            log.warning("event=stale_guest_claims_released count=%s", released)

    async def close(self) -> None:
        """Let go of every VM without stopping it: they keep running for the next daemon,
        which folds their I/O from where this one left it."""
        await self.fold_guest_io()
        await self.driver.detach_all()
        await self.drivers.close()
        self.active.clear()
        await self._networks.close()  # what running VMs use stays; with none, all goes


def boot_drive(config: ServerConfig) -> str | None:
    """The drive the server boots from: its first `boot` slot's, else its first drive."""
    for slot in config.boot:
        if (attachment := config.drive(slot)) is not None:
            return attachment.drive
    return config.drives[0].drive if config.drives else None
