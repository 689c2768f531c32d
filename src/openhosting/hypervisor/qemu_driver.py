"""The hypervisor driver of real QEMU (see driver.py for the interface and its events).

Each VM is a daemonized QEMU held as a `RunningVm` (vm.py) with its run directory under
`run_path/<server uuid>`. Here, and nowhere above, live the host's parts of a VM: the run
directory and its owner (QEMU drops to `hypervisor.run_as`), the secret files of encrypted
drives (written just before QEMU starts, removed right after), the platform's VNC TLS
credentials, the cgroup holding the vCPUs to their quota, the watch resuming VMs a full disk
paused, and the probing of ports (is a VNC port free on this host?).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import pwd
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from openhosting.config import ConfigError, HypervisorSettings
from openhosting.hypervisor import driver, migration, process
from openhosting.hypervisor.argv import choose_accelerator
from openhosting.hypervisor.cpu_quota import (
    CgroupLayout,
    find_cpu_cgroup,
    place_vm_threads,
    quota_us,
    remove_cpu_group,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.run_files import DIRECTORY_FLAGS, write_new_file
from openhosting.hypervisor.serial_log import SerialLogLimit, read_log
from openhosting.hypervisor.space_resume import SpaceResumer
from openhosting.hypervisor.spec import (
    DriveSecret,
    HostVmSettings,
    RunPaths,
    VmSpec,
)
from openhosting.hypervisor.vm import Pause, RunningVm
from openhosting.reverter import Reverter
from openhosting.vnc.tls import ensure_vnc_tls, vnc_tls_dir

log = logging.getLogger("openhosting.hypervisor")


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


def serial_log_limit(settings: HypervisorSettings) -> SerialLogLimit:
    """The bound of every VM's serial log, from the settings."""
    try:
        return SerialLogLimit(settings.serial_log_kib * 1024, settings.serial_log_files)
    except ValueError:
        raise ConfigError(
            "hypervisor.serial_log_kib and hypervisor.serial_log_files must be at least 1"
        ) from None


def migration_ports(settings: HypervisorSettings) -> range:
    """The ports of `hypervisor.migration_ports` (FIRST-LAST); ConfigError if it is not a
    range of TCP ports, or `hypervisor.migration_address` no host name or IPv4 address."""
    if settings.migration_address:
        try:
            driver.check_stream_address(f"tcp:{settings.migration_address}:1")
        except ValueError:
            raise ConfigError(
                f"hypervisor.migration_address {settings.migration_address!r}: expected a host"
                " name or IPv4 address"
            ) from None
    first, _, last = settings.migration_ports.partition("-")
    try:
        ports = range(int(first), int(last or first) + 1)
    except ValueError:
        ports = range(0)
    if not ports or ports.start < 1 or ports.stop > 1 << 16:
        raise ConfigError(
            f"hypervisor.migration_ports {settings.migration_ports!r}: expected FIRST-LAST,"
            " TCP ports"
        )
    return ports


def migration_bandwidth(settings: HypervisorSettings) -> int:
    """Bytes/s of `hypervisor.migration_max_bandwidth` (MiB/s; 0: no limit); ConfigError if
    it is negative."""
    if settings.migration_max_bandwidth < 0:
        raise ConfigError(
            f"hypervisor.migration_max_bandwidth {settings.migration_max_bandwidth}: expected"
            " MiB/s, or 0 for no limit"
        )
    return settings.migration_max_bandwidth << 20


def port_is_free(address: str, port: int) -> bool:
    """Whether nothing on this host listens on TCP `address`:`port` (a bind succeeds)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _write_secrets(secrets: tuple[DriveSecret, ...]) -> None:
    # In the run directory, which QEMU's account owns: never written through a link.
    for secret in secrets:
        directory = os.open(secret.path.parent, DIRECTORY_FLAGS)
        try:
            write_new_file(directory, secret.path.name, secret.passphrase)
        finally:
            os.close(directory)


def _make_empty(path: Path, size: int, header: bytes = b"") -> None:
    """A new drive file of `size` bytes, all holes but `header` at its start (an encrypted
    drive's LUKS header, for QEMU to open it): a migration's mirror fills the rest."""
    if len(header) > size:
        raise HypervisorError(f"a drive header of {len(header)} bytes for a file of {size}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with Reverter() as revert:
        revert.add(functools.partial(path.unlink, missing_ok=True))  # made here: not left
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, header, 0)
        finally:
            os.close(fd)
        revert.success()


@dataclass(frozen=True)
class _Incoming:
    """A VM waiting for a live migration (`prepare_incoming`), not held yet."""

    vm: RunningVm
    request: driver.StartRequest
    files: tuple[Path, ...]  # the drives' files it made
    ports: tuple[int, ...] = ()  # the TCP ports its streams listen on


def _remove_secrets(spec: VmSpec) -> None:
    for disk in spec.disks:
        if disk.secret_file is not None:
            disk.secret_file.unlink(missing_ok=True)


class QemuDriver:
    """The QEMU VMs of this host (implements `HypervisorDriver`)."""

    def __init__(
        self,
        settings: HypervisorSettings,
        run_path: Path,
        state_path: Path,
        *,
        cgroup: CgroupLayout | None = None,
        migration_tls: migration.MigrationTls | None = None,
    ) -> None:
        self._settings = settings
        self._run_path = run_path
        self._tls_dir = vnc_tls_dir(state_path)
        self.limit = serial_log_limit(settings)
        self._accelerator = choose_accelerator(settings.accelerator)
        # None: `cpu` cannot be enforced on this host.
        self.cgroup = cgroup if cgroup is not None else find_cpu_cgroup()
        self._run_as = qemu_user(settings.run_as)
        self._vms: dict[str, RunningVm] = {}
        self._handler: driver.EventHandler | None = None
        self._space_resumer = SpaceResumer()
        self._incoming: dict[str, _Incoming] = {}
        # Servers whose VM is migrating out: its pause at the end of it is no one's event.
        self._migrating: set[str] = set()
        # None: migrations in and out of this host go without TLS.
        self._migration_tls = migration_tls
        self._migration_ports = migration_ports(settings)
        self._migration_bandwidth = migration_bandwidth(settings)
        self._ports_taken: set[int] = set()  # by VMs waiting for a migration here

    def listen(self, handler: driver.EventHandler) -> None:
        self._handler = handler

    # -- the host --------------------------------------------------------------------

    def host_settings(self, *, vnc_listen: str, netns: str | None) -> HostVmSettings:
        return HostVmSettings(
            accelerator=self._accelerator,
            vnc_listen=vnc_listen,
            vnc_tls_dir=self._tls_dir,
            qemu_binary=self._settings.qemu_binary,
            sandbox=self._settings.sandbox,
            run_as=self._run_as.pw_name if self._run_as else None,
            netns=netns,
        )

    def run_dir(self, server: str) -> Path:
        return self._run_path / server

    def vnc_port_free(self, address: str, port: int) -> bool:
        return port_is_free(address, port)

    # -- life ------------------------------------------------------------------------

    async def start(
        self, request: driver.StartRequest, restore: driver.StateStream | None = None
    ) -> driver.VmStatus:
        request = self._with_nbd_tls(request)
        spec = request.spec
        if spec.uuid in self._vms:
            raise HypervisorError(f"VM {spec.uuid} runs already")
        async with Reverter() as revert:
            self._make_run_dir(spec.run_dir)
            if spec.vnc is not None and spec.vnc.tls_dir is not None:
                # Made once per platform (slow: RSA keys), so in a worker thread.
                names = [name for name in (spec.vnc.address, *request.vnc_names) if name]
                await asyncio.to_thread(ensure_vnc_tls, spec.vnc.tls_dir, names)
            # QEMU reads the LUKS passphrases at start-up; they need not outlive that.
            revert.add(functools.partial(asyncio.to_thread, _remove_secrets, spec))
            await asyncio.to_thread(_write_secrets, request.secrets)
            vm = await RunningVm.start(
                spec,
                self._vm_exited,
                timeout=request.timeout,
                serial_limit=self.limit,
                saved_state=restore,
            )
            # Until it is held, its exit is nobody's event: this start fails instead.
            revert.add(functools.partial(vm.kill, self._settings.stop_timeout))
            if request.vnc_password and spec.vnc is not None:
                await vm.set_vnc_password(request.vnc_password)
            if request.cpu_mhz is not None:
                await self._limit_cpu(vm, request.cpu_mhz)
            if vm.exited.is_set():
                raise HypervisorError(f"VM {spec.uuid} ended while it started")
            self._hold(vm)
            revert.success()
        await asyncio.to_thread(_remove_secrets, spec)
        log.info("event=vm_started server=%s pid=%s", spec.uuid, vm.pid)
        return self._status_of(vm)

    def _with_nbd_tls(self, request: driver.StartRequest) -> driver.StartRequest:
        """`request` with this host's cluster certificate as the client credentials of its
        disks over NBD (another host's exports), if it has any. QEMU loads them as it starts,
        before it drops to `hypervisor.run_as`, so the host's own directory serves."""
        spec = request.spec
        if not any(disk.nbd for disk in spec.disks):
            return request
        if self._migration_tls is None:
            raise HypervisorError(
                "this host has no cluster certificate: drives of other hosts cannot be"
                " attached over NBD"
            )
        spec = dataclasses.replace(spec, nbd_tls_dir=self._migration_tls.directory)
        return dataclasses.replace(request, spec=spec)

    def _make_run_dir(self, run_dir: Path) -> None:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._run_as is not None:
            # QEMU, once unprivileged, still removes its pidfile and sockets at exit: it
            # owns its run directory and may pass through the one above.
            os.chown(run_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            os.chmod(run_dir.parent, 0o711)

    def _hold(self, vm: RunningVm) -> None:
        self._vms[vm.uuid] = vm
        vm.on_state = self._state_changed
        vm.before_end = self._powered_off

    async def adopt(
        self, server: str, *, started: float, timeout: float = 10.0
    ) -> driver.VmStatus | None:
        vm = await RunningVm.adopt(
            server, self.run_dir(server), self._vm_exited, timeout=timeout,
            serial_limit=self.limit,
        )  # fmt: skip
        if vm is None:
            return None
        vm.started = started
        self._hold(vm)
        # Its guest may have powered off while no daemon ran: QEMU paused it.
        await vm.end_if_powered_off()
        # It may have been paused meanwhile (a full disk, say): QEMU knows.
        await vm.refresh_state()
        log.info("event=vm_adopted server=%s pid=%s", server, vm.pid)
        return self._status_of(vm)

    def how_ended(self, server: str) -> driver.VmEnd:
        # QEMU removes its pidfile when it exits cleanly; one left behind means a crash.
        return (
            driver.VmEnd.CRASH
            if RunPaths(self.run_dir(server)).pidfile.exists()
            else driver.VmEnd.SHUTDOWN
        )

    async def unheld(self) -> list[str]:
        run_path = self._run_path
        found = []
        for run_dir in sorted(run_path.iterdir()) if run_path.is_dir() else []:
            if run_dir.name in self._vms or not run_dir.is_dir():
                continue
            if process.adopt(run_dir, run_dir.name) is not None:
                found.append(run_dir.name)
        return found

    async def stop_unheld(self, server: str, timeout: float = 10.0) -> None:
        if (pid := process.adopt(self.run_dir(server), server)) is not None:
            log.warning("event=vm_unheld_stopped server=%s pid=%s", server, pid)
            await process.kill(pid, server, timeout=timeout)

    async def stop(self, server: str, timeout: float = 10.0) -> None:
        await self._held(server).stop(timeout)

    async def kill(self, server: str, timeout: float = 10.0) -> None:
        await self._held(server).kill(timeout)

    async def powerdown(self, server: str) -> None:
        await self._held(server).powerdown()

    async def reset(self, server: str) -> None:
        await self._held(server).reset()

    async def resume(self, server: str) -> None:
        await self._held(server).resume()

    async def save_state(self, server: str, sink: driver.StateStream, timeout: float) -> None:
        await self._held(server).save_state(sink, timeout=timeout)

    async def detach_all(self) -> None:
        await self._space_resumer.close()
        for vm in list(self._vms.values()):
            await vm.detach()
        self._vms.clear()
        # Targets of migrations under way too: the next daemon stops them (`unheld`).
        for incoming in list(self._incoming.values()):
            await incoming.vm.detach()
        self._incoming.clear()

    def forget(self, server: str) -> None:
        shutil.rmtree(self.run_dir(server), ignore_errors=True)

    # -- live migration (see migration.py) --------------------------------------------

    async def prepare_incoming(self, request: driver.IncomingRequest) -> driver.IncomingInfo:
        spec = request.start.spec
        if not spec.incoming:
            raise HypervisorError("a VM to receive by migration needs spec.incoming")
        if spec.uuid in self._vms or spec.uuid in self._incoming:
            raise HypervisorError(f"VM {spec.uuid} runs already")
        sizes, headers = dict(request.drive_bytes), dict(request.drive_headers)
        copied = [disk for disk in spec.disks if disk.slot in sizes]
        if any(disk.format == "luks" and disk.slot not in headers for disk in copied):
            # QEMU opens the LUKS layer at start, from the header in the file.
            raise HypervisorError("an encrypted drive is copied only with its LUKS header")
        async with Reverter() as revert:
            nbd_address, migration_uri, ports = self._incoming_addresses(spec)
            self._ports_taken.update(ports)
            revert.add(functools.partial(self._ports_taken.difference_update, ports))
            self._make_run_dir(spec.run_dir)
            revert.add(functools.partial(shutil.rmtree, spec.run_dir, ignore_errors=True))
            for disk in copied:
                header = headers.get(disk.slot, b"") if disk.format == "luks" else b""
                await asyncio.to_thread(_make_empty, disk.path, sizes[disk.slot], header)
                revert.add(functools.partial(disk.path.unlink, missing_ok=True))
            if spec.vnc is not None and spec.vnc.tls_dir is not None:
                names = [name for name in (spec.vnc.address, *request.start.vnc_names) if name]
                await asyncio.to_thread(ensure_vnc_tls, spec.vnc.tls_dir, names)
            # As at a start: QEMU reads the passphrases of encrypted drives as it starts.
            revert.add(functools.partial(asyncio.to_thread, _remove_secrets, spec))
            await asyncio.to_thread(_write_secrets, request.start.secrets)
            vm = await RunningVm.start(
                spec, self._vm_exited, timeout=request.start.timeout, serial_limit=self.limit
            )
            revert.add(functools.partial(vm.kill, self._settings.stop_timeout))
            await asyncio.to_thread(_remove_secrets, spec)
            vm.started = request.started or vm.started
            # An encrypted drive's copy lands on its file node: the ciphertext as it is.
            nodes = [disk.file_node if disk.format == "luks" else disk.node_name for disk in copied]
            await migration.serve_incoming(
                vm.monitor, nodes, nbd_address, migration_uri, self._tls_load(spec.run_dir)
            )
            self._incoming[spec.uuid] = _Incoming(
                vm, request.start, tuple(disk.path for disk in copied), ports
            )
            revert.success()
        log.info("event=vm_incoming server=%s pid=%s address=%s", spec.uuid, vm.pid, migration_uri)
        return driver.IncomingInfo(
            server=spec.uuid,
            migration_uri=migration_uri,
            nbd_address=nbd_address,
            # (the source's node, the export): the source mirrors its device node.
            exports=tuple((disk.node_name, node) for disk, node in zip(copied, nodes, strict=True)),
            tls_hostname=self._migration_tls.host if self._migration_tls else None,
            drive_paths=tuple((disk.slot, str(disk.path)) for disk in copied),
        )

    def _incoming_addresses(self, spec: VmSpec) -> tuple[str, str, tuple[int, ...]]:
        """Where a VM moving in takes its drives (NBD) and its state: unix sockets in its run
        directory, or two free ports of `hypervisor.migration_ports` on
        `hypervisor.migration_address` (those ports, kept apart until it is in)."""
        host = self._settings.migration_address
        if not host:
            directory = spec.paths.directory
            return f"unix:{directory / 'nbd.sock'}", f"unix:{directory / 'mig.sock'}", ()
        free = (
            port
            for port in self._migration_ports
            if port not in self._ports_taken and port_is_free(host, port)
        )
        ports = tuple(itertools.islice(free, 2))
        if len(ports) < 2:
            raise HypervisorError(
                f"no two free ports in hypervisor.migration_ports {self._settings.migration_ports}"
            )
        return f"tcp:{host}:{ports[0]}", f"tcp:{host}:{ports[1]}", ports

    async def migrate_out(self, server: str, target: driver.IncomingInfo, timeout: float) -> None:
        vm = self._held(server)
        async with Reverter() as revert:
            self._migrating.add(server)
            revert.add(functools.partial(self._migrating.discard, server))
            revert.add(functools.partial(self._run_on, vm))
            tls, limit = self._tls_load(self.run_dir(server)), self._migration_bandwidth
            await migration.migrate_out(vm.monitor, target, revert, timeout, tls, limit)
            revert.success()
        log.info("event=vm_migrated_out server=%s", server)

    def _tls_load(self, run_dir: Path) -> migration.TlsLoad | None:
        """How the QEMU of `run_dir` loads this host's migration TLS, if there is one."""
        if self._migration_tls is None:
            return None
        owner = (self._run_as.pw_uid, self._run_as.pw_gid) if self._run_as else None
        return migration.TlsLoad(self._migration_tls, run_dir, owner)

    async def finish_incoming(self, server: str, timeout: float) -> driver.VmStatus:
        incoming = self._incoming.get(server)
        if incoming is None:
            raise HypervisorError(f"No VM of server {server} waits for a migration here")
        vm, request = incoming.vm, incoming.request
        await migration.take_over(vm.monitor, timeout, tls=self._migration_tls is not None)
        if request.vnc_password and request.spec.vnc is not None:
            await vm.set_vnc_password(request.vnc_password)
        if request.cpu_mhz is not None:
            await self._limit_cpu(vm, request.cpu_mhz)
        await vm.refresh_state()
        if vm.exited.is_set():
            raise HypervisorError(f"VM {server} ended while it took over")
        del self._incoming[server]
        self._ports_taken.difference_update(incoming.ports)
        self._hold(vm)
        return self._status_of(vm)

    async def abort_incoming(self, server: str) -> None:
        incoming = self._incoming.pop(server, None)
        if incoming is None:
            return
        self._ports_taken.difference_update(incoming.ports)
        await incoming.vm.kill(self._settings.stop_timeout)
        for path in incoming.files:
            path.unlink(missing_ok=True)
        self.forget(server)
        log.warning("event=vm_incoming_aborted server=%s", server)

    async def cancel_migrate_out(self, server: str) -> None:
        await self._run_on(self._held(server))
        self._migrating.discard(server)

    async def end_migrated(self, server: str, timeout: float = 10.0) -> None:
        vm = self._vms.pop(server, None)  # no longer held: its exit is no one's event
        self._migrating.discard(server)
        if vm is None:
            raise HypervisorError(f"No VM of server {server} runs here")
        await vm.stop(timeout)
        self.forget(server)

    async def _run_on(self, vm: RunningVm) -> None:
        """The guest runs here again after a migration that did not happen; its state read
        before its events count again (it was RUNNING for everyone meanwhile)."""
        await migration.run_on(vm.monitor)
        await vm.refresh_state()

    # -- while it runs ---------------------------------------------------------------

    def status(self, server: str) -> driver.VmStatus | None:
        vm = self._vms.get(server)
        return self._status_of(vm) if vm is not None else None

    def held(self) -> list[str]:
        return list(self._vms)

    async def held_on_host(self) -> list[str]:
        return self.held()

    async def set_cpu(self, server: str, cpu_mhz: int) -> None:
        await self._limit_cpu(self._held(server), cpu_mhz)

    async def set_vnc_password(self, server: str, password: str | None) -> None:
        await self._held(server).set_vnc_password(password)

    async def blockstats(self, server: str) -> Mapping[str, driver.BlockStats]:
        return await self._held(server).blockstats()

    def serial_log(self, server: str) -> bytes | None:
        path = RunPaths(self.run_dir(server)).serial_log
        if not path.exists():
            return None
        return read_log(path, self.limit.files, self.limit.total_bytes)

    def vm(self, server: str) -> RunningVm:
        """The QEMU of `server` itself, for tests and tools of this host only."""
        return self._held(server)

    # -- inside ----------------------------------------------------------------------

    def _held(self, server: str) -> RunningVm:
        vm = self._vms.get(server)
        if vm is None:
            raise HypervisorError(f"No VM of server {server} runs here")
        return vm

    @staticmethod
    def _status_of(vm: RunningVm) -> driver.VmStatus:
        if vm.pause is None:
            return driver.VmStatus(vm.uuid, driver.VmState.RUNNING, started=vm.started)
        return driver.VmStatus(vm.uuid, driver.VmState.PAUSED, vm.pause.reason, started=vm.started)

    async def _limit_cpu(self, vm: RunningVm, cpu_mhz: int) -> None:
        """Hold the vCPU threads of `vm` to `cpu_mhz` (see cpu_quota.py)."""
        if self.cgroup is None:
            return
        vcpu_tids = await vm.vcpu_threads()
        quota = quota_us(cpu_mhz, self._settings.core_mhz)
        # In a worker thread: moving a process between cgroups waits for the kernel (an RCU
        # grace period, ms to tens of ms on a busy host), which would hold every other start.
        await asyncio.to_thread(place_vm_threads, self.cgroup, vm.uuid, vm.pid, vcpu_tids, quota)

    async def _emit(self, event: driver.VmEvent) -> None:
        if self._handler is not None:
            await self._handler(event)

    async def _state_changed(self, server: str, pause: Pause | None) -> None:
        if server in self._migrating:
            return
        if pause is None:
            await self._emit(driver.VmEvent(server, driver.VmEventKind.RESUMED))
            return
        if pause.reason == driver.PauseReason.NOSPACE and (vm := self._vms.get(server)) is not None:
            self._space_resumer.watch(vm)
        await self._emit(driver.VmEvent(server, driver.VmEventKind.PAUSED, reason=pause.reason))

    async def _powered_off(self, server: str) -> None:
        await self._emit(driver.VmEvent(server, driver.VmEventKind.POWERED_OFF))

    async def _vm_exited(self, server: str, how: driver.VmEnd) -> None:
        await self._space_resumer.cancel(server)
        try:
            if server in self._vms:  # one a start gave up is nobody's event
                await self._emit(driver.VmEvent(server, driver.VmEventKind.EXITED, how=how))
        finally:
            self._vms.pop(server, None)
            if self.cgroup is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(remove_cpu_group, self.cgroup, server)
