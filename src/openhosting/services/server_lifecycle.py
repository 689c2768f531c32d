"""The VMs of servers: starting one, changing one while it runs, reading its live figures,
and what happens when it ends; at daemon start, adopting those a previous daemon left running.

The database says what a server should be; whether its VM runs is known from the VM itself
(`RunningVm`), held here by server in `vms`. When a VM ends for any reason, `vm_exited` applies
the rules: a persistent server becomes `stopped` (or `dead` after a crash), a non-persistent
one is destroyed; its drives, addresses and VNC overlay are released. A VM that ends because
its state was saved (`dump_vm`, for host maintenance) is the exception: its server, persistent
or not, is `dumped` and keeps its drives claimed (their content must not change under the
saved memory) until `start_vm` restores it. Callers (the server
service) check ownership, claim the drives and hold the server's lock around these steps.
"""

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pwd
import shutil
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from openhosting.config import Config
from openhosting.errors import FailedError
from openhosting.hypervisor import process
from openhosting.hypervisor.argv import choose_accelerator
from openhosting.hypervisor.cpu_quota import (
    find_cpu_cgroup,
    place_vm_threads,
    quota_us,
    remove_cpu_group,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import VNC_BASE_PORT, VmSpec
from openhosting.hypervisor.vm import NOSPACE, SHUTDOWN, Pause, RunningVm
from openhosting.hypervisor.vnc_tls import ensure_vnc_tls, vnc_tls_dir
from openhosting.model.server import ServerConfig
from openhosting.services.drives import AttachableDrive
from openhosting.services.events import EventBus
from openhosting.services.guest_io import fold_guest_io
from openhosting.services.server_dumps import ServerDumps
from openhosting.services.server_info import LiveFigures
from openhosting.services.server_logs import ServerLogs
from openhosting.services.server_network import ServerNetworks
from openhosting.services.space_resume import SpaceResumer
from openhosting.services.vm_specs import HostVmSettings, VmPlan, build_vm_spec
from openhosting.store import servers as server_store

log = logging.getLogger("openhosting.servers")

# How often what running guests did to their drives reaches the drives' counters. A VM that
# ends by itself (guest power-off, crash) takes the I/O since the last fold with it; a stop,
# destroy or daemon stop folds first.
GUEST_IO_FOLD_SECONDS = 30.0
GUEST_IO_QUERY_SECONDS = 2.0

# Saving or restoring a guest's memory: a few seconds per GiB on a disk, generous for slow ones.
STATE_TIMEOUT = 300.0
DUMPED = "dumped"


def qemu_user(setting: str) -> pwd.struct_passwd | None:
    """The account QEMU drops to (see HypervisorSettings.run_as), if any."""
    if setting == "auto":
        setting = "nobody" if os.geteuid() == 0 else ""
    if not setting:
        return None
    try:
        return pwd.getpwnam(setting)
    except KeyError:
        log.warning("event=qemu_user_missing user=%s", setting)
        return None


def _write_secrets(plan: VmPlan) -> None:
    for secret in plan.secrets:
        fd = os.open(secret.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(secret.passphrase)


def _remove_secrets(spec: VmSpec) -> None:
    for disk in spec.disks:
        if disk.secret_file is not None:
            disk.secret_file.unlink(missing_ok=True)


class ServerLifecycle:
    """The running VMs of this daemon's servers."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        networks: ServerNetworks,
        events: EventBus | None = None,
    ) -> None:
        self._engine = engine
        self._events = events if events is not None else EventBus()
        self._config = config
        self._settings = config.hypervisor
        self._networks = networks
        self.logs = ServerLogs(config)
        self._accelerator = choose_accelerator(self._settings.accelerator)
        self.cgroup = find_cpu_cgroup()  # None: `cpu` cannot be enforced on this host
        self._run_as = qemu_user(self._settings.run_as)
        # The VM of every active server; only this class adds and removes entries.
        self.vms: dict[str, RunningVm] = {}
        # Servers whose VNC is also on their own address (bridge mode): their address.
        self._vnc_overlays: dict[str, str] = {}
        self._space_resumer = SpaceResumer()
        self.dumps = ServerDumps.of_state(config.state_path, config.platform_key_path)
        # Servers whose VM is ending because its state was saved: `vm_exited` keeps them.
        self._dumping: set[str] = set()

    def run_dir(self, uuid: str) -> Path:
        return self._config.run_path / uuid

    def _vnc_listen(self) -> str:
        """Where VNC listens: in bridge mode the host's address on the public bridge (QEMU
        may run in a namespace, where the host's loopback is out of reach)."""
        return self._networks.vnc_address or self._settings.vnc_listen

    def vnc_endpoint(self, display: int) -> tuple[str, int]:
        """Where the daemon itself reaches the VNC server of `display` (the web console)."""
        return self._vnc_listen(), VNC_BASE_PORT + display

    def _host_settings(self) -> HostVmSettings:
        return HostVmSettings(
            accelerator=self._accelerator,
            vnc_listen=self._vnc_listen(),
            vnc_tls_dir=vnc_tls_dir(self._config.state_path),
            qemu_binary=self._settings.qemu_binary,
            sandbox=self._settings.sandbox,
            run_as=self._run_as.pw_name if self._run_as else None,
            netns=self._networks.namespace,
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
    ) -> None:
        """Start the VM of `uuid`, whose drives are claimed and VNC `display` picked; the
        server is `active` once this returns. Every step is undone if a later one fails.
        With `restore`, the VM runs on from its dump instead of booting; the dump is removed
        once it runs."""
        run_dir = self.run_dir(uuid)
        begun = time.monotonic()
        async with AsyncExitStack() as undo:
            nics = await self._networks.acquire(user, uuid, config)
            undo.push_async_callback(self._networks.release, uuid)
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._run_as is not None:
                # QEMU, once unprivileged, still removes its pidfile and sockets at exit:
                # it owns its run directory and may pass through the one above.
                os.chown(run_dir, self._run_as.pw_uid, self._run_as.pw_gid)
                os.chmod(run_dir.parent, 0o711)
            if config.vnc_tls and display is not None:
                # Made once per platform (slow: RSA keys), so in a worker thread.
                tls_dir = vnc_tls_dir(self._config.state_path)
                names = [
                    self._vnc_listen(),
                    self._networks.vnc_address_of(uuid)
                    or self._networks.nic0_address(uuid, config),
                ]
                await asyncio.to_thread(ensure_vnc_tls, tls_dir, [n for n in names if n])
            plan = build_vm_spec(
                uuid,
                config,
                drives,
                run_dir=run_dir,
                host=self._host_settings(),
                display=display,
                nics=nics,
            )
            spec = dataclasses.replace(plan.spec, incoming=True) if restore else plan.spec
            # QEMU reads the LUKS passphrases at start-up; they need not outlive that.
            undo.push_async_callback(asyncio.to_thread, _remove_secrets, spec)
            _write_secrets(plan)
            try:
                vm = await RunningVm.start(
                    spec,
                    self.vm_exited,
                    timeout=STATE_TIMEOUT if restore else self._settings.start_timeout,
                    serial_limit=self.logs.limit,
                    saved_state=self.dumps.source(uuid) if restore else None,
                )
            except HypervisorError as error:
                log.warning("event=server_start_failed server=%s error=%s", uuid, error)
                raise
            # Whatever fails from here on must not leave a VM running that nobody holds.
            undo.push_async_callback(vm.kill, self._settings.stop_timeout)
            if config.vnc_password and display is not None:
                await vm.set_vnc_password(config.vnc_password)
            if display is not None:
                await self._open_vnc_overlay(uuid, config, display)
                undo.push_async_callback(self._close_vnc_overlay, uuid)
            await self._limit_cpu(vm, config.cpu)
            started = int(time.time())
            vm.started = started
            self.vms[uuid] = vm
            vm.on_state = functools.partial(self._vm_state_changed, user)
            vm.before_end = self.fold_guest_io  # a guest's power-off: its last I/O counts
            with self._engine.begin() as connection:
                server_store.update_server(connection, uuid, status="active", started_at=started)
            undo.pop_all()
            await asyncio.to_thread(_remove_secrets, spec)
        if restore:
            await asyncio.to_thread(self.dumps.remove, uuid)  # used: the guest runs on
        log.info(
            "event=server_started user=%s server=%s pid=%s restored=%s",
            user, uuid, vm.pid, str(restore).lower(),
        )  # fmt: skip
        for attachment in config.drives:
            self._events.publish(
                user, "drive", attachment.drive, "claimed", server=uuid, device=attachment.slot
            )
        self._events.publish(
            user, "server", uuid, "status", status="active", started=started,
            start_seconds=round(time.monotonic() - begun, 3),
        )  # fmt: skip
        if vm.pause is not None:  # paused before anyone listened (a full disk at boot)
            await self._vm_state_changed(user, uuid, vm.pause)

    # -- paused and resumed ----------------------------------------------------------

    async def _vm_state_changed(self, user: str, uuid: str, pause: Pause | None) -> None:
        """QEMU paused or resumed the VM of `uuid`: tell its owner; a full disk is watched
        for room to resume it."""
        if pause is None:
            self._events.publish(user, "server", uuid, "status", status="active", reason="resumed")
            return
        self._events.publish(user, "server", uuid, "status", status="paused", reason=pause.reason)
        vm = self.vms.get(uuid)
        if pause.reason == NOSPACE and vm is not None:
            self._space_resumer.watch(vm)

    async def _open_vnc_overlay(self, uuid: str, config: ServerConfig, display: int) -> None:
        """In bridge mode, VNC is also reached on the server's own address, port 5900."""
        guest = await self._networks.open_vnc(uuid, config, VNC_BASE_PORT + display)
        if guest is not None:
            self._vnc_overlays[uuid] = guest

    async def _close_vnc_overlay(self, uuid: str) -> None:
        address = self._vnc_overlays.pop(uuid, None)
        if address is not None:
            await self._networks.close_vnc(uuid, address)

    # -- while it runs ---------------------------------------------------------------

    async def reconfigure(self, vm: RunningVm, current: ServerConfig, merged: ServerConfig) -> None:
        """Apply to a running VM what a `set` may change live: its CPU quota, its VNC
        password, the ports its NICs block."""
        if [nic.block for nic in merged.nics] != [nic.block for nic in current.nics]:
            await self._networks.block(vm.uuid, merged)
        if merged.cpu != current.cpu:
            await self._limit_cpu(vm, merged.cpu)
        if merged.vnc_password != current.vnc_password:
            with contextlib.suppress(HypervisorError):  # no VNC server: applies at next start
                await vm.set_vnc_password(merged.vnc_password)

    async def _limit_cpu(self, vm: RunningVm, cpu_mhz: int) -> None:
        """Hold the vCPU threads of `vm` to `cpu_mhz` (see hypervisor/cpu_quota.py)."""
        if self.cgroup is None:
            return
        vcpu_tids = await vm.vcpu_threads()
        quota = quota_us(cpu_mhz, self._settings.core_mhz)
        place_vm_threads(self.cgroup, vm.uuid, vm.pid, vcpu_tids, quota)

    async def live_figures(
        self, row: dict[str, Any], config: ServerConfig, vm: RunningVm
    ) -> LiveFigures:
        """What the running `vm` of the server in `row` tells for its info."""
        try:
            blockstats = await vm.blockstats()
        except HypervisorError:
            blockstats = {}  # the VM is going away; its counters with it
        display = row["vnc_display"]
        traffic = await self._networks.counters(row["uuid"])
        return LiveFigures(
            started=int(row["started_at"] or vm.started),
            nic0_address=self._networks.nic0_address(row["uuid"], config),
            vnc_address=self._vnc_overlays.get(row["uuid"], self._vnc_listen())
            if display is not None
            else None,
            vnc_port=(
                VNC_BASE_PORT if row["uuid"] in self._vnc_overlays else VNC_BASE_PORT + display
            )
            if display is not None
            else None,
            blockstats=blockstats,
            rx=traffic.rx_bytes,
            tx=traffic.tx_bytes,
            rx_packets=traffic.rx_packets,
            tx_packets=traffic.tx_packets,
        )

    async def fold_guest_io(self, uuid: str | None = None) -> None:
        """Add what the guest of `uuid` (or of every running VM) read and wrote since the
        last fold to its drives' I/O counters (see services/guest_io.py)."""
        vms = [self.vms[uuid]] if uuid in self.vms else [] if uuid else list(self.vms.values())
        readings = {}
        for vm in vms:
            try:
                # Short: a stop or destroy waits for it, and a stuck monitor must not hold
                # them (their own `quit` then times out and kills).
                async with asyncio.timeout(GUEST_IO_QUERY_SECONDS):
                    readings[vm.uuid] = await vm.blockstats()
            except (HypervisorError, TimeoutError):
                continue  # the VM is going away; the last fold holds what it did before
        if readings:
            fold_guest_io(self._engine, readings)

    async def fold_guest_io_every(self, interval: float = GUEST_IO_FOLD_SECONDS) -> None:
        """Fold the running guests' I/O every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.fold_guest_io()

    # -- saving a VM's state ------------------------------------------------------------

    async def dump_vm(self, uuid: str) -> None:
        """Save the running VM's memory and device state to its dump and end it: the server
        is `dumped` once this returns. If the state cannot be saved, the VM runs on."""
        vm = self.vms.get(uuid)
        if vm is None:
            raise FailedError(f"Server {uuid} is not active")
        begun = time.monotonic()
        await self.fold_guest_io(uuid)  # QEMU's counters end with it
        try:
            await vm.save_state(self.dumps.sink(uuid), timeout=STATE_TIMEOUT)
            await asyncio.to_thread(self.dumps.commit, uuid)
        except (HypervisorError, OSError) as error:
            await asyncio.to_thread(self.dumps.remove, uuid)
            if vm.monitor.connected:
                with contextlib.suppress(HypervisorError):
                    await vm.monitor.cont()
            log.warning("event=server_dump_failed server=%s error=%s", uuid, error)
            raise FailedError(f"Server {uuid} could not be dumped: {error}") from error
        self._dumping.add(uuid)
        try:
            await vm.stop(self._settings.stop_timeout)
        finally:
            self._dumping.discard(uuid)
        log.info(
            "event=server_dumped server=%s seconds=%.3f bytes=%s",
            uuid, time.monotonic() - begun, self.dumps.path(uuid).stat().st_size,
        )  # fmt: skip

    def discard_dump(self, uuid: str) -> None:
        """The dumped server is stopped instead of restored: its saved state and claims go,
        and the stop rules apply (a non-persistent server is destroyed)."""
        self.dumps.remove(uuid)
        with self._engine.begin() as connection:
            row = server_store.get_server(connection, uuid)
            server_store.remove_guest_claims(connection, uuid)
            persistent = row is not None and json.loads(row["config"]).get("persistent") == "true"
            if persistent:
                server_store.update_server(connection, uuid, status="stopped")
            elif row is not None:
                server_store.delete_server(connection, uuid)
        if row is not None and not persistent:
            log.info("event=server_destroyed server=%s reason=dump_discarded", uuid)
            self.remove_run_dir(uuid)

    # -- end -------------------------------------------------------------------------

    async def vm_exited(self, uuid: str, how: str) -> None:
        """The VM of `uuid` is gone: release its drives and apply the persistence rules."""
        await self._space_resumer.cancel(uuid)
        try:
            await self._close_vnc_overlay(uuid)
        except (FailedError, OSError) as error:
            log.warning("event=vnc_overlay_close_failed server=%s error=%s", uuid, error)
        try:
            await self._networks.release(uuid)  # its taps, DHCP entries and addresses
        except (FailedError, OSError) as error:
            log.warning("event=network_release_failed server=%s error=%s", uuid, error)
        # The database first, and no await until the VM has left `vms`: whoever sees the
        # server no longer active must also see its drives released.
        dumped = uuid in self._dumping
        try:
            with self._engine.begin() as connection:
                row = server_store.get_server(connection, uuid)
                config = json.loads(row["config"]) if row is not None else {}
                if not dumped:
                    server_store.remove_guest_claims(connection, uuid)
                if dumped and row is not None:
                    # Its drives stay claimed: what they hold belongs with the saved memory.
                    server_store.update_server(
                        connection, uuid, status=DUMPED, started_at=None, vnc_display=None
                    )
                    log.info("event=server_stopped server=%s status=%s", uuid, DUMPED)
                elif row is not None and config.get("persistent") != "true":
                    server_store.delete_server(connection, uuid)
                    log.info("event=server_destroyed server=%s reason=vm_%s", uuid, how)
                elif row is not None:
                    status = "stopped" if how == SHUTDOWN else "dead"
                    server_store.update_server(
                        connection, uuid, status=status, started_at=None, vnc_display=None
                    )
                    log.info("event=server_stopped server=%s status=%s", uuid, status)
        finally:
            self.vms.pop(uuid, None)
        if dumped and row is not None:
            self._events.publish(row["user"], "server", uuid, "status", status=DUMPED)
        elif row is not None:
            self._publish_exit(row["user"], uuid, config, how)
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(remove_cpu_group, self.cgroup, uuid)
        if not dumped and row is not None and config.get("persistent") != "true":
            self.remove_run_dir(uuid)

    def remove_run_dir(self, uuid: str) -> None:
        """The server is destroyed: keep the last of its serial log, remove the rest."""
        run_dir = self.run_dir(uuid)
        try:
            self.logs.keep(uuid, run_dir)
        except OSError as error:
            log.warning("event=server_log_keep_failed server=%s error=%s", uuid, error)
        shutil.rmtree(run_dir, ignore_errors=True)

    def _publish_exit(self, user: str, uuid: str, config: dict[str, str], how: str) -> None:
        for attachment in ServerConfig.from_properties(config).drives:
            self._events.publish(
                user, "drive", attachment.drive, "released", server=uuid, device=attachment.slot
            )
        if config.get("persistent") != "true":
            self._events.publish(user, "server", uuid, "destroyed", reason=f"vm_{how}")
        else:
            status = "stopped" if how == SHUTDOWN else "dead"
            self._events.publish(user, "server", uuid, "status", status=status, reason=how)

    # -- daemon start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt the VMs of active servers; reconcile those that ended meanwhile."""
        await self._networks.start()
        with self._engine.connect() as connection:
            rows = server_store.servers_with_status(connection, "active")
        adopted: dict[str, ServerConfig] = {}
        for row in rows:
            uuid = row["uuid"]
            run_dir = self.run_dir(uuid)
            try:
                vm = await RunningVm.adopt(
                    uuid, run_dir, self.vm_exited, serial_limit=self.logs.limit
                )
            except HypervisorError as error:
                # A VM that runs but cannot be controlled cannot be left running unseen:
                # stop it, and the server is dead (its owner can start it again).
                log.warning("event=server_adopt_failed server=%s error=%s", uuid, error)
                vm = None
                if (pid := process.adopt(run_dir, uuid)) is not None:
                    await process.kill(pid, uuid, timeout=self._settings.stop_timeout)
            if vm is not None:
                vm.started = float(row["started_at"] or 0)
                self.vms[uuid] = vm
                vm.on_state = functools.partial(self._vm_state_changed, row["user"])
                vm.before_end = self.fold_guest_io
                # Its guest may have powered off while no daemon ran: QEMU paused it.
                await vm.end_if_powered_off()
                # It may have been paused meanwhile (a full disk, say): QEMU knows.
                await vm.refresh_state()
                config = ServerConfig.from_properties(json.loads(row["config"]))
                adopted[uuid] = config
                try:
                    # Placed again: threads may have been moved meanwhile, or placed by an
                    # older daemon with the quota on the whole process.
                    await self._limit_cpu(vm, config.cpu)
                except (HypervisorError, OSError, ValueError) as error:
                    log.warning("event=cpu_quota_failed server=%s error=%s", uuid, error)
                if row["vnc_display"] is not None:
                    with contextlib.suppress(FailedError, OSError):
                        await self._open_vnc_overlay(uuid, config, row["vnc_display"])
                log.info("event=server_adopted server=%s pid=%s", uuid, vm.pid)
                continue
            # QEMU removes its pidfile when it exits cleanly; one left behind means a crash.
            crashed = (run_dir / "qemu.pid").exists()
            await self.vm_exited(uuid, "crash" if crashed else SHUTDOWN)
        await self._stop_unowned_vms()
        await self._networks.recover({u: c for u, c in adopted.items() if u in self.vms})

    async def adopt_for_maintenance(self) -> dict[str, str]:
        """For the admin tool when no daemon answers: hold the VMs of active servers as
        `recover` does, but never stop one it cannot control (a daemon may hold it) and leave
        networking as it is but for starting it. Returns why each one not held is not."""
        await self._networks.start()
        with self._engine.connect() as connection:
            rows = server_store.servers_with_status(connection, "active")
        unreachable: dict[str, str] = {}
        for row in rows:
            uuid = row["uuid"]
            try:
                vm = await RunningVm.adopt(
                    uuid, self.run_dir(uuid), self.vm_exited, timeout=3,
                    serial_limit=self.logs.limit,
                )  # fmt: skip
            except HypervisorError as error:
                unreachable[uuid] = f"its VM cannot be controlled here ({error})"
                continue
            if vm is None:
                unreachable[uuid] = "its VM does not run (the daemon reconciles it at start)"
                continue
            vm.started = float(row["started_at"] or 0)
            self.vms[uuid] = vm
        return unreachable

    async def _stop_unowned_vms(self) -> None:
        """A daemon killed between QEMU's start and the server's `active` (or its claims and
        the start) leaves a VM, or claims, that no active server owns: the start was never
        answered, so the VM is stopped and the claims released (a start later is a 500 and
        the drives stay `claimed` otherwise)."""
        run_path = self._config.run_path
        for run_dir in sorted(run_path.iterdir()) if run_path.is_dir() else []:
            if run_dir.name in self.vms or not run_dir.is_dir():
                continue
            if (pid := process.adopt(run_dir, run_dir.name)) is not None:
                log.warning("event=server_orphan_stopped server=%s pid=%s", run_dir.name, pid)
                await process.kill(pid, run_dir.name, timeout=self._settings.stop_timeout)
        with self._engine.begin() as connection:
            # A dumped server has no VM and keeps its claims: its disks must not change.
            dumped = {row["uuid"] for row in server_store.servers_with_status(connection, DUMPED)}
            released = server_store.remove_guest_claims_except(connection, set(self.vms) | dumped)
        if released:
            log.warning("event=stale_guest_claims_released count=%s", released)

    async def close(self) -> None:
        """Let go of every VM without stopping it: they keep running for the next daemon,
        which folds their I/O from where this one left it."""
        await self._space_resumer.close()
        await self.fold_guest_io()
        for vm in list(self.vms.values()):
            await vm.detach()
        self.vms.clear()
        await self._networks.close()  # what running VMs use stays; with none, all goes
