"""A hypervisor driver holding its VMs in memory, for fast tests (`hypervisor.driver = fake`).

It keeps the rules of `HypervisorDriver` (driver.py) as QEMU does, which the behaviour suite
(tests/hypervisor/test_driver_behaviour.py) checks on both, and nothing else: no process, no
file, no guest. Deterministic: nothing happens unless asked, and what a VM does by itself is a
fault a test injects:

- `fail_next_start(message)`: the next start fails (after "spawning": nothing is left);
- `crash(server)`: the VM vanishes without a SHUTDOWN (EXITED, CRASH);
- `guest_power_off(server)`: the guest powers itself off (POWERED_OFF, then EXITED, SHUTDOWN);
- `pause(server, reason)`: the hypervisor pauses the VM (a full disk: NOSPACE);
- `stick(server)`: its monitor stops answering: commands time out after `qmp_timeout`.
- `host.ports_in_use`: ports something else on the host listens on (`vnc_port_free`).

A live migration (`prepare_incoming` ... `end_migrated`) moves a VM between the drivers of two
fake hosts with its memory and serial log; a target that `crash`es before `migrate_out` makes
it fail, and the VM runs on where it was.

VMs live on a `FakeHost`, which outlives a driver: a new driver on the same host finds them
(`adopt`), as a restarted daemon finds QEMU processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from openhosting.hypervisor import driver
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import HostVmSettings, VmSpec
from openhosting.reverter import Reverter

QMP_TIMEOUT = 10.0  # as QEMU's monitor client waits


@dataclass
class FakeVm:
    """One VM on the fake host: its spec and what a monitor would tell of it."""

    spec: VmSpec
    started: float
    state: driver.VmState = driver.VmState.RUNNING
    reason: str | None = None
    cpu_mhz: int | None = None
    vnc_password: str | None = None
    blockstats: dict[str, driver.BlockStats] = field(default_factory=dict)
    stuck: bool = False
    # Whatever was saved and restored with it: the proof a restore is the same VM.
    memory: dict[str, str] = field(default_factory=dict)
    # Moving in: the slots of the drives a migration copies into its files.
    copied: frozenset[str] = frozenset()


# The VMs waiting for a live migration, by their migration URI, with the host they wait on:
# what the target's socket would be, reachable from any fake host of the process.
_waiting: dict[str, tuple[FakeHost, FakeVm]] = {}


@dataclass
class FakeHost:
    """What outlives a driver: the VMs that run, how ended ones ended, serial logs, the
    ports taken by others."""

    vms: dict[str, FakeVm] = field(default_factory=dict)
    ended: dict[str, driver.VmEnd] = field(default_factory=dict)
    logs: dict[str, bytes] = field(default_factory=dict)
    # TCP (address, port) pairs something else on the host listens on (`vnc_port_free`).
    ports_in_use: set[tuple[str, int]] = field(default_factory=set)


class FakeHypervisor:
    """In-memory VMs (implements `HypervisorDriver`)."""

    def __init__(self, run_path: Path = Path("/nonexistent"), host: FakeHost | None = None):
        self._run_path = run_path
        self.host = host if host is not None else FakeHost()
        self._held: set[str] = set()
        self._handler: driver.EventHandler | None = None
        self._next_start_error: str | None = None
        self._next_start_delay = 0.0
        self._next_start_lost = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.qmp_timeout = QMP_TIMEOUT
        # Each VM asked to move in (`prepare_incoming`), as asked: its secrets and headers.
        self.incoming_requests: list[driver.IncomingRequest] = []

    def listen(self, handler: driver.EventHandler) -> None:
        self._handler = handler

    # -- faults ----------------------------------------------------------------------

    def fail_next_start(self, message: str = "QEMU failed to start (simulated)") -> None:
        self._next_start_error = message

    def lose_next_start(self) -> None:
        """The next start runs its VM but fails as if its agent had died before answering:
        a restarted agent finds the VM running, held by nobody."""
        self._next_start_lost = True

    def delay_next_start(self, seconds: float) -> None:
        """The next start takes `seconds` before its VM runs (a slow QEMU): time for a test
        to kill whoever asked for it meanwhile."""
        self._next_start_delay = seconds

    async def crash(self, server: str) -> None:
        """The VM vanishes (killed, died): EXITED with CRASH once handled."""
        await self._exit(server, driver.VmEnd.CRASH)

    async def guest_power_off(self, server: str) -> None:
        """The guest powers itself off: POWERED_OFF (the last look), then EXITED."""
        await self._emit_bounded(driver.VmEvent(server, driver.VmEventKind.POWERED_OFF))
        await self._exit(server, driver.VmEnd.SHUTDOWN)

    async def pause(self, server: str, reason: str = "paused") -> None:
        """The hypervisor pauses the VM (a full disk: NOSPACE)."""
        vm = self._vm(server)
        vm.state, vm.reason = driver.VmState.PAUSED, reason
        if server in self._held:
            await self._emit(driver.VmEvent(server, driver.VmEventKind.PAUSED, reason=reason))

    def stick(self, server: str, stuck: bool = True) -> None:
        """Its monitor stops (or starts again) answering."""
        self._vm(server).stuck = stuck

    def print_serial(self, server: str, text: bytes) -> None:
        """What the guest prints on its serial port."""
        self.host.logs[server] = self.host.logs.get(server, b"") + text

    async def settle(self) -> None:
        """Wait until what was asked of the VMs (a guest's power-off) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the host --------------------------------------------------------------------

    def host_settings(self, *, vnc_listen: str, netns: str | None) -> HostVmSettings:
        return HostVmSettings(
            accelerator="tcg",
            vnc_listen=vnc_listen,
            vnc_tls_dir=self._run_path / "vnc-tls",
            qemu_binary="fake-qemu",
            run_as=None,
            netns=netns,
        )

    def run_dir(self, server: str) -> Path:
        return self._run_path / server

    def vnc_port_free(self, address: str, port: int) -> bool:
        return (address, port) not in self.host.ports_in_use

    # -- life ------------------------------------------------------------------------

    async def start(
        self, request: driver.StartRequest, restore: driver.StateStream | None = None
    ) -> driver.VmStatus:
        spec = request.spec
        if (restore is None) == spec.incoming:
            raise ValueError("a saved state goes with spec.incoming, and only with it")
        if self._next_start_delay:
            delay, self._next_start_delay = self._next_start_delay, 0.0
            await asyncio.sleep(delay)
        vm = self._new_vm(request, time.time())
        if restore is not None:
            vm.memory = json.loads(await _receive(restore, request.timeout))
        else:
            self.host.logs.pop(spec.uuid, None)  # a booting VM's log starts empty
        self.host.vms[spec.uuid] = vm
        self.host.ended.pop(spec.uuid, None)
        if self._next_start_lost:
            self._next_start_lost = False
            raise HypervisorError(f"the agent died while starting {spec.uuid} (simulated)")
        self._held.add(spec.uuid)
        return self._status_of(vm)

    async def adopt(
        self, server: str, *, started: float, timeout: float = 10.0
    ) -> driver.VmStatus | None:
        vm = self.host.vms.get(server)
        if vm is None:
            return None
        if vm.stuck:
            raise HypervisorError(f"QMP of {server} did not answer in {timeout:g} s")
        vm.started = started
        self._held.add(server)
        return self._status_of(vm)

    def how_ended(self, server: str) -> driver.VmEnd:
        return self.host.ended.get(server, driver.VmEnd.SHUTDOWN)

    async def unheld(self) -> list[str]:
        return sorted(set(self.host.vms) - self._held)

    async def stop_unheld(self, server: str, timeout: float = 10.0) -> None:
        if server not in self._held and self.host.vms.pop(server, None) is not None:
            self.host.ended[server] = driver.VmEnd.SHUTDOWN

    async def stop(self, server: str, timeout: float = 10.0) -> None:
        vm = self._vm(server)
        # A monitor that does not answer `quit`: killed with signals after the wait.
        await self._exit(server, driver.VmEnd.CRASH if vm.stuck else driver.VmEnd.SHUTDOWN)

    async def kill(self, server: str, timeout: float = 10.0) -> None:
        self._vm(server)
        await self._exit(server, driver.VmEnd.SHUTDOWN)  # SIGTERM: QEMU ends cleanly

    async def powerdown(self, server: str) -> None:
        await self._monitor(server)
        # The guest takes its time: its power-off comes after the answer.
        task = asyncio.create_task(self.guest_power_off(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reset(self, server: str) -> None:
        await self._monitor(server)

    async def resume(self, server: str) -> None:
        vm = await self._monitor(server)
        if vm.state == driver.VmState.PAUSED:
            vm.state, vm.reason = driver.VmState.RUNNING, None
            await self._emit(driver.VmEvent(server, driver.VmEventKind.RESUMED))

    async def save_state(self, server: str, sink: driver.StateStream, timeout: float) -> None:
        vm = await self._monitor(server)
        async with Reverter() as revert:
            revert.add(functools.partial(_set_state, vm, vm.state, vm.reason))  # runs on
            vm.state, vm.reason = driver.VmState.PAUSED, "paused"
            try:
                await _send(sink, json.dumps(vm.memory).encode(), timeout)
            except OSError as error:
                raise HypervisorError(f"cannot store the state of {server}: {error}") from error
            revert.success()

    async def detach_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._held.clear()

    def forget(self, server: str) -> None:
        self.host.logs.pop(server, None)

    # -- live migration --------------------------------------------------------------

    async def prepare_incoming(self, request: driver.IncomingRequest) -> driver.IncomingInfo:
        spec = request.start.spec
        if not spec.incoming:
            raise HypervisorError("a VM to receive by migration needs spec.incoming")
        copied = {slot for slot, _size in request.drive_bytes}
        headers = dict(request.drive_headers)
        if any(d.format == "luks" and d.slot in copied - headers.keys() for d in spec.disks):
            raise HypervisorError("an encrypted drive is copied only with its LUKS header")
        self.incoming_requests.append(request)
        vm = self._new_vm(request.start, request.started or time.time())
        vm.state, vm.reason = driver.VmState.PAUSED, "inmigrate"
        vm.copied = frozenset(copied)
        self.host.vms[spec.uuid] = vm
        uri = f"unix:/fake-migration/{id(self.host)}/{spec.uuid}"
        _waiting[uri] = (self.host, vm)
        nodes = [f"drive-{disk.device_id}" for disk in spec.disks if disk.slot in copied]
        paths = tuple((disk.slot, str(disk.path)) for disk in spec.disks if disk.slot in copied)
        exports = tuple((n, n) for n in nodes)
        return driver.IncomingInfo(spec.uuid, uri, f"{uri}.nbd", exports, drive_paths=paths)

    async def migrate_out(self, server: str, target: driver.IncomingInfo, timeout: float) -> None:
        vm = await self._monitor(server)
        host, incoming = _waiting.get(target.migration_uri, (None, None))
        if host is None or incoming is None or host.vms.get(server) is not incoming:
            raise HypervisorError(f"cannot reach the migration target {target.migration_uri}")
        incoming.memory = dict(vm.memory)
        # The drives' bytes, as a mirror copies them (those whose file exists here).
        sources = {disk.slot: disk.path for disk in vm.spec.disks}
        for disk in incoming.spec.disks:
            source = sources.get(disk.slot)
            if disk.slot in incoming.copied and source is not None and source.exists():
                await asyncio.to_thread(shutil.copyfile, source, disk.path)
        host.logs[server] = self.host.logs.get(server, b"")
        vm.state, vm.reason = (
            driver.VmState.PAUSED,
            "postmigrate",
        )  # no event: it moves, it did not pause

    async def finish_incoming(self, server: str, timeout: float) -> driver.VmStatus:
        vm = self.host.vms.get(server)
        uri = f"unix:/fake-migration/{id(self.host)}/{server}"
        if vm is None or _waiting.get(uri, (None, None))[1] is not vm:
            raise HypervisorError(f"No VM of server {server} waits for a migration here")
        del _waiting[uri]
        vm.state, vm.reason = driver.VmState.RUNNING, None
        self._held.add(server)
        return self._status_of(vm)

    async def abort_incoming(self, server: str) -> None:
        entry = _waiting.pop(f"unix:/fake-migration/{id(self.host)}/{server}", None)
        if entry is None:
            return
        if self.host.vms.get(server) is entry[1]:
            del self.host.vms[server]
            self.host.logs.pop(server, None)
        for disk in entry[1].spec.disks:  # the copies it got (dead or not), as QEMU's
            if disk.slot in entry[1].copied:
                disk.path.unlink(missing_ok=True)

    async def cancel_migrate_out(self, server: str) -> None:
        _set_state(self._vm(server), driver.VmState.RUNNING, None)

    async def end_migrated(self, server: str, timeout: float = 10.0) -> None:
        self._vm(server)
        self._held.discard(server)  # before it ends: no one is told, it did not end
        del self.host.vms[server]
        self.host.logs.pop(server, None)

    # -- while it runs ---------------------------------------------------------------

    def status(self, server: str) -> driver.VmStatus | None:
        vm = self.host.vms.get(server)
        return self._status_of(vm) if vm is not None and server in self._held else None

    def held(self) -> list[str]:
        return sorted(self._held)

    async def held_on_host(self) -> list[str]:
        return self.held()

    async def set_cpu(self, server: str, cpu_mhz: int) -> None:
        (await self._monitor(server)).cpu_mhz = cpu_mhz

    async def set_vnc_password(self, server: str, password: str | None) -> None:
        vm = await self._monitor(server)
        if vm.spec.vnc is None:
            raise HypervisorError(f"VM {server} has no VNC server")
        vm.vnc_password = password

    async def blockstats(self, server: str) -> Mapping[str, driver.BlockStats]:
        return dict((await self._monitor(server)).blockstats)

    def serial_log(self, server: str) -> bytes | None:
        return self.host.logs.get(server)

    # -- inside ----------------------------------------------------------------------

    def vm(self, server: str) -> FakeVm:
        """The fake VM of `server`, for tests to look at and set counters on."""
        return self._vm(server)

    def _vm(self, server: str) -> FakeVm:
        vm = self.host.vms.get(server)
        if vm is None or server not in self._held:
            raise HypervisorError(f"No VM of server {server} runs here")
        return vm

    async def _monitor(self, server: str) -> FakeVm:
        vm = self._vm(server)
        if vm.stuck:
            await asyncio.sleep(self.qmp_timeout)
            raise HypervisorError(f"QMP of {server} did not answer in {self.qmp_timeout:g} s")
        return vm

    @staticmethod
    def _status_of(vm: FakeVm) -> driver.VmStatus:
        return driver.VmStatus(vm.spec.uuid, vm.state, vm.reason, started=vm.started)

    def _new_vm(self, request: driver.StartRequest, started: float) -> FakeVm:
        """The VM `request` starts (not on the host yet), or why it cannot start: it runs
        already, or a test made this start fail."""
        spec = request.spec
        if spec.uuid in self.host.vms:
            raise HypervisorError(f"VM {spec.uuid} runs already")
        if self._next_start_error is not None:
            message, self._next_start_error = self._next_start_error, None
            raise HypervisorError(message)
        vm = FakeVm(spec, started, cpu_mhz=request.cpu_mhz, vnc_password=request.vnc_password)
        vm.blockstats = {disk.slot: driver.BlockStats(0, 0, 0, 0) for disk in spec.disks}
        return vm

    async def _emit(self, event: driver.VmEvent) -> None:
        if self._handler is not None:
            await self._handler(event)

    async def _emit_bounded(self, event: driver.VmEvent) -> None:
        try:
            async with asyncio.timeout(driver.ENDING_TIMEOUT):
                await self._emit(event)
        except Exception:  # never keeps a powered-off VM alive, as with QEMU
            pass

    async def _exit(self, server: str, how: driver.VmEnd) -> None:
        if self.host.vms.pop(server, None) is None:
            return
        self.host.ended[server] = how
        if server not in self._held:
            return  # nobody holds it: nobody is told
        try:
            await self._emit(driver.VmEvent(server, driver.VmEventKind.EXITED, how=how))
        finally:
            self._held.discard(server)


def _set_state(vm: FakeVm, state: driver.VmState, reason: str | None) -> None:
    vm.state, vm.reason = state, reason


async def _send(sink: driver.StateStream, data: bytes, timeout: float) -> None:
    """Stream `data` into `sink` through a pipe, as QEMU streams a saved state."""
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writing = asyncio.create_task(asyncio.to_thread(write))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.to_thread(driver.run_state_stream, sink, read_end)
    finally:
        with contextlib.suppress(Exception):
            await writing


async def _receive(source: driver.StateStream, timeout: float) -> bytes:
    """What `source` streams, read through a pipe as a restoring QEMU reads it."""
    read_end, write_end = os.pipe()

    def read() -> bytes:
        with os.fdopen(read_end, "rb") as pipe:
            return pipe.read()

    feeding = asyncio.create_task(asyncio.to_thread(driver.run_state_stream, source, write_end))
    async with asyncio.timeout(timeout):
        data = await asyncio.to_thread(read)
        await feeding
    return data
