"""Servers: their configuration, ownership and claims, and their VMs' lifecycle (API.md §5).

The database holds what a server is and what it should be; whether its VM runs is known from
the VM itself (`RunningVm`). One lock per server serialises lifecycle actions. When a VM
ends for any reason, `_vm_exited` applies the rules: a persistent server becomes `stopped`
(or `dead` after a crash), a non-persistent one is destroyed; its drives are released.
"""

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import socket
import time
import uuid as uuid_module
from collections import defaultdict
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy import Connection, Engine

from openhosting.config import Config
from openhosting.errors import BusyError, FailedError, MissingError, UsageError
from openhosting.hypervisor import process
from openhosting.hypervisor.argv import DiskSpec, NicSpec, VmSpec, VncSpec, choose_accelerator
from openhosting.hypervisor.cpu_quota import (
    apply_cpu_quota,
    find_cpu_cgroup,
    quota_us,
    remove_cpu_group,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.vm import SHUTDOWN, RunningVm
from openhosting.hypervisor.vnc_tls import ensure_vnc_tls, vnc_tls_dir
from openhosting.model.server import ServerConfig
from openhosting.network import open_network
from openhosting.services.billing import Billing
from openhosting.services.drives import AttachableDrive, Drives
from openhosting.services.resources import Resources
from openhosting.services.server_info import LiveFigures, server_info
from openhosting.services.server_network import ServerNetworks
from openhosting.store import servers as server_store
from openhosting.store.reader import Reader
from openhosting.wire.payload import Value

log = logging.getLogger("openhosting.servers")

VNC_BASE_PORT = 5900


def _missing(uuid: str) -> MissingError:
    return MissingError(f"Server {uuid} could not be found")


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


class Servers:
    """The server service."""

    def __init__(
        self,
        engine: Engine,
        reader: Reader,
        drives: Drives,
        config: Config,
        networks: ServerNetworks | None = None,
        billing: Billing | None = None,
    ) -> None:
        self._billing = billing
        self._engine = engine
        self._reader = reader
        self._drives = drives
        self._config = config
        self._settings = config.hypervisor
        self._accelerator = choose_accelerator(self._settings.accelerator)
        self._cgroup = find_cpu_cgroup()
        self._run_as = qemu_user(self._settings.run_as)
        # Servers whose VNC is also on their own address (bridge mode): their address.
        self._vnc_overlays: dict[str, str] = {}
        if networks is None:
            pool, driver = open_network(config.network, config.run_path / "network")
            networks = ServerNetworks(engine, Resources(engine, reader, pool), pool, driver)
        self._networks = networks
        self._vms: dict[str, RunningVm] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- lookups ---------------------------------------------------------------------

    def _owned(self, connection: Connection, user: str, uuid: str) -> dict[str, Any]:
        row = server_store.get_server(connection, uuid)
        if row is None or row["user"] != user:
            raise _missing(uuid)
        return row

    def _get(self, user: str, uuid: str) -> dict[str, Any]:
        with self._engine.connect() as connection:
            return self._owned(connection, user, uuid)

    def _status(self, row: dict[str, Any]) -> str:
        if row["uuid"] in self._vms:
            return "active"
        return "dead" if row["status"] == "dead" else "stopped"

    def run_dir(self, uuid: str) -> Any:
        return self._config.run_path / uuid

    # -- reading ---------------------------------------------------------------------

    def list_rows(self, user: str) -> list[dict[str, Value]]:
        rows = self._reader.all_cached(server_store.SERVER_LIST_BY_USER, user=user)
        result: list[dict[str, Value]] = []
        for uuid, config_json in rows:
            config = json.loads(config_json)
            result.append({"server": uuid, "cpu": int(config["cpu"]), "mem": int(config["mem"])})
        return result

    async def info(self, user: str, uuid: str) -> dict[str, Value]:
        return await self._info_of(self._get(user, uuid))

    async def info_all(self, user: str) -> list[dict[str, Value]]:
        with self._engine.connect() as connection:
            rows = server_store.servers_of(connection, user)
        return [await self._info_of(row) for row in rows]

    async def _info_of(self, row: dict[str, Any]) -> dict[str, Value]:
        config = ServerConfig.from_properties(json.loads(row["config"]))
        vm = self._vms.get(row["uuid"])
        status = self._status(row)  # before any await: the VM may end meanwhile
        live = await self._live_figures(row, config, vm) if vm is not None else None
        return server_info(row["uuid"], row["user"], status, config, live)

    async def _live_figures(
        self, row: dict[str, Any], config: ServerConfig, vm: RunningVm
    ) -> LiveFigures:
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

    def _vnc_listen(self) -> str:
        """Where VNC listens: in bridge mode the host's address on the public bridge (QEMU
        may run in a namespace, where the host's loopback is out of reach)."""
        return self._networks.vnc_address or self._settings.vnc_listen

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
        self._networks.check(user, config)  # IP and VLAN resources, VLANs in user mode
        return attachable

    async def create(self, user: str, properties: dict[str, str], start: bool) -> dict[str, Value]:
        config = ServerConfig.from_properties(properties)
        self._check_config(user, config)
        uuid = str(uuid_module.uuid4())
        with self._engine.begin() as connection:
            if self._billing is not None:
                self._billing.check_new_server(connection, user)
            server_store.insert_server(
                connection,
                uuid=uuid,
                user=user,
                config=json.dumps(config.canonical_properties(), sort_keys=True),
                status="stopped",
                created_at=time.time(),  # sub-second: lists keep creation order
            )
        log.info("event=server_created user=%s server=%s", user, uuid)
        if start:
            try:
                await self.start(user, uuid)
            except BaseException:
                # A create that cannot start leaves nothing behind.
                with self._engine.begin() as connection:
                    server_store.delete_server(connection, uuid)
                raise
        return await self.info(user, uuid)

    async def set_config(
        self, user: str, uuid: str, properties: dict[str, str]
    ) -> dict[str, Value]:
        async with self._locks[uuid]:
            row = self._get(user, uuid)
            current = ServerConfig.from_properties(json.loads(row["config"]))
            merged = current.merge(properties)
            vm = self._vms.get(uuid)
            if vm is None:
                self._check_config(user, merged)
            else:
                if offline := current.offline_changes(properties):
                    raise BusyError(
                        f"Server {uuid} is active: {', '.join(offline)} can only be changed"
                        " while it is stopped"
                    )
                await self._apply_live(vm, current, merged)
            with self._engine.begin() as connection:
                server_store.update_server(
                    connection,
                    uuid,
                    config=json.dumps(merged.canonical_properties(), sort_keys=True),
                )
        return await self.info(user, uuid)

    async def _apply_live(self, vm: RunningVm, current: ServerConfig, merged: ServerConfig) -> None:
        if merged.cpu != current.cpu and self._cgroup is not None:
            quota = quota_us(merged.cpu, self._settings.core_mhz)
            apply_cpu_quota(self._cgroup, vm.uuid, vm.pid, quota)
        if merged.vnc_password != current.vnc_password:
            with contextlib.suppress(HypervisorError):  # no VNC server: applies at next start
                await vm.set_vnc_password(merged.vnc_password)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, user: str, uuid: str) -> None:
        async with self._locks[uuid]:
            row = self._get(user, uuid)
            if uuid in self._vms:
                raise BusyError(f"Server {uuid} is already active")
            config = ServerConfig.from_properties(json.loads(row["config"]))
            drives = self._check_config(user, config)
            await self._start_vm(user, uuid, config, drives)

    async def _start_vm(
        self, user: str, uuid: str, config: ServerConfig, drives: list[AttachableDrive]
    ) -> None:
        run_dir = self.run_dir(uuid)
        async with AsyncExitStack() as undo:
            display = self._claim(user, uuid, config, drives)
            undo.callback(self._release, uuid)
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
                names = [self._vnc_listen(), self._networks.nic0_address(uuid, config)]
                await asyncio.to_thread(ensure_vnc_tls, tls_dir, [n for n in names if n])
            spec = self._vm_spec(uuid, config, drives, display, nics)
            # QEMU reads the LUKS passphrases at start-up; they need not outlive that.
            undo.push_async_callback(asyncio.to_thread, self._remove_secrets, spec)
            try:
                vm = await RunningVm.start(
                    spec, self._vm_exited, timeout=self._settings.start_timeout
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
            if self._cgroup is not None:
                apply_cpu_quota(
                    self._cgroup, uuid, vm.pid, quota_us(config.cpu, self._settings.core_mhz)
                )
            started = int(time.time())
            vm.started = started
            self._vms[uuid] = vm
            with self._engine.begin() as connection:
                server_store.update_server(connection, uuid, status="active", started_at=started)
            undo.pop_all()
            await asyncio.to_thread(self._remove_secrets, spec)
        log.info("event=server_started user=%s server=%s pid=%s", user, uuid, vm.pid)

    def _claim(
        self, user: str, uuid: str, config: ServerConfig, drives: list[AttachableDrive]
    ) -> int | None:
        """Claim the drives (409 if another server or an imaging job holds one) and pick a
        VNC display, in one transaction."""
        with self._engine.begin() as connection:
            if self._billing is not None:
                self._billing.check_server_start(connection, user, uuid, config.cpu, config.mem)
            existing = server_store.claims_on_drives(connection, [d.uuid for d in drives])
            by_drive = {drive.uuid: drive for drive in drives}
            for claim in existing:
                drive = by_drive[claim["drive"]]
                if claim["kind"] != "guest" or claim["exclusive"] or drive.exclusive:
                    raise BusyError(
                        f"Drive {claim['drive']} is in use ({claim['kind']} {claim['holder']})"
                    )
            server_store.add_guest_claims(
                connection,
                user,
                uuid,
                [(a.drive, a.slot, by_drive[a.drive].exclusive) for a in config.drives],
            )
            display = None
            if config.vnc_password:
                display = self._free_vnc_display(server_store.used_vnc_displays(connection))
                server_store.update_server(connection, uuid, vnc_display=display)
        return display

    def _release(self, uuid: str) -> None:
        with self._engine.begin() as connection:
            server_store.remove_guest_claims(connection, uuid)
            server_store.update_server(connection, uuid, vnc_display=None)

    def _free_vnc_display(self, used: set[int]) -> int:
        for display in range(0, 1000):
            if display in used:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((self._settings.vnc_listen, VNC_BASE_PORT + display))
                except OSError:
                    continue
            return display
        raise BusyError("No free VNC display on this host")

    def _vm_spec(
        self,
        uuid: str,
        config: ServerConfig,
        drives: list[AttachableDrive],
        display: int | None,
        nics: tuple[NicSpec, ...] = (),
    ) -> VmSpec:
        run_dir = self.run_dir(uuid)
        by_drive = {drive.uuid: drive for drive in drives}
        disks = []
        for attachment in config.drives:
            drive = by_drive[attachment.drive]
            secret_file = None
            if drive.passphrase is not None:
                secret_file = run_dir / f"secret-{attachment.slot.replace(':', '-')}"
                fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(drive.passphrase)
            disks.append(
                DiskSpec(
                    slot=attachment.slot,
                    path=drive.path,
                    media=attachment.media,
                    format="luks" if secret_file is not None else "raw",
                    secret_file=secret_file,
                )
            )
        tls_dir = vnc_tls_dir(self._config.state_path) if config.vnc_tls else None
        vnc = VncSpec(self._vnc_listen(), display, tls_dir) if display is not None else None
        return VmSpec(
            uuid=uuid,
            smp=config.smp_cores,
            mem_mb=config.mem,
            run_dir=run_dir,
            accelerator=self._accelerator,
            disks=tuple(disks),
            boot=config.boot,
            nics=nics,
            vnc=vnc,
            qemu_binary=self._settings.qemu_binary,
            sandbox=self._settings.sandbox,
            run_as=self._run_as.pw_name if self._run_as else None,
            netns=self._networks.namespace,
        )

    @staticmethod
    def _remove_secrets(spec: VmSpec) -> None:
        for disk in spec.disks:
            if disk.secret_file is not None:
                disk.secret_file.unlink(missing_ok=True)

    async def _open_vnc_overlay(self, uuid: str, config: ServerConfig, display: int) -> None:
        """In bridge mode, VNC is also reached on the server's own address, port 5900."""
        guest = await self._networks.open_vnc(uuid, config, VNC_BASE_PORT + display)
        if guest is not None:
            self._vnc_overlays[uuid] = guest

    async def _close_vnc_overlay(self, uuid: str) -> None:
        guest = self._vnc_overlays.pop(uuid, None)
        if guest is not None:
            await self._networks.driver.close_vnc(guest)

    async def _vm_exited(self, uuid: str, how: str) -> None:
        """The VM of `uuid` is gone: release its drives and apply the persistence rules."""
        try:
            await self._close_vnc_overlay(uuid)
        except (FailedError, OSError) as error:
            log.warning("event=vnc_overlay_close_failed server=%s error=%s", uuid, error)
        try:
            await self._networks.release(uuid)  # its taps, DHCP entries and addresses
        except (FailedError, OSError) as error:
            log.warning("event=network_release_failed server=%s error=%s", uuid, error)
        # The database first, and no await until the VM has left `_vms`: whoever sees the
        # server no longer active must also see its drives released.
        try:
            with self._engine.begin() as connection:
                row = server_store.get_server(connection, uuid)
                server_store.remove_guest_claims(connection, uuid)
                config = json.loads(row["config"]) if row is not None else {}
                if row is not None and config.get("persistent") != "true":
                    server_store.delete_server(connection, uuid)
                    log.info("event=server_destroyed server=%s reason=vm_%s", uuid, how)
                elif row is not None:
                    status = "stopped" if how == SHUTDOWN else "dead"
                    server_store.update_server(
                        connection, uuid, status=status, started_at=None, vnc_display=None
                    )
                    log.info("event=server_stopped server=%s status=%s", uuid, status)
        finally:
            self._vms.pop(uuid, None)
        if self._cgroup is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(remove_cpu_group, self._cgroup, uuid)
        if row is not None and config.get("persistent") != "true":
            shutil.rmtree(self.run_dir(uuid), ignore_errors=True)

    async def stop(self, user: str, uuid: str) -> None:
        async with self._locks[uuid]:
            self._get(user, uuid)
            vm = self._vms.get(uuid)
            if vm is not None:
                await vm.stop(self._settings.stop_timeout)

    async def shutdown(self, user: str, uuid: str) -> None:
        async with self._locks[uuid]:
            self._get(user, uuid)
            vm = self._vms.get(uuid)
            if vm is not None:
                await vm.powerdown()

    async def reset(self, user: str, uuid: str) -> None:
        async with self._locks[uuid]:
            self._get(user, uuid)
            vm = self._vms.get(uuid)
            if vm is None:
                raise BusyError(f"Server {uuid} is not active and cannot be reset")
            await vm.reset()

    async def destroy(self, user: str, uuid: str) -> None:
        async with self._locks[uuid]:
            self._get(user, uuid)
            vm = self._vms.get(uuid)
            if vm is not None:
                await vm.stop(self._settings.stop_timeout)
            with self._engine.begin() as connection:
                server_store.remove_guest_claims(connection, uuid)
                server_store.delete_server(connection, uuid)
        self._locks.pop(uuid, None)
        shutil.rmtree(self.run_dir(uuid), ignore_errors=True)
        log.info("event=server_destroyed user=%s server=%s", user, uuid)

    # -- daemon start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt the VMs of active servers; reconcile those that ended meanwhile."""
        await self._networks.start()
        with self._engine.connect() as connection:
            rows = server_store.servers_with_status(connection, "active")
        for row in rows:
            uuid = row["uuid"]
            run_dir = self.run_dir(uuid)
            try:
                vm = await RunningVm.adopt(uuid, run_dir, self._vm_exited)
            except HypervisorError as error:
                # A VM that runs but cannot be controlled cannot be left running unseen:
                # stop it, and the server is dead (its owner can start it again).
                log.warning("event=server_adopt_failed server=%s error=%s", uuid, error)
                vm = None
                if (pid := process.adopt(run_dir, uuid)) is not None:
                    await process.kill(pid, uuid, timeout=self._settings.stop_timeout)
            if vm is not None:
                vm.started = float(row["started_at"] or 0)
                self._vms[uuid] = vm
                if row["vnc_display"] is not None:
                    config = ServerConfig.from_properties(json.loads(row["config"]))
                    with contextlib.suppress(FailedError, OSError):
                        await self._open_vnc_overlay(uuid, config, row["vnc_display"])
                log.info("event=server_adopted server=%s pid=%s", uuid, vm.pid)
                continue
            # QEMU removes its pidfile when it exits cleanly; one left behind means a crash.
            crashed = (run_dir / "qemu.pid").exists()
            await self._vm_exited(uuid, "crash" if crashed else SHUTDOWN)
        await self._networks.recover(set(self._vms))

    async def close(self) -> None:
        """Let go of every VM without stopping it: they keep running for the next daemon."""
        for vm in list(self._vms.values()):
            await vm.detach()
        self._vms.clear()
        await self._networks.close()  # what running VMs use stays; with none, all goes
