"""A running VM as the daemon holds it: its QEMU process, its QMP monitor, its serial port
(logged with a bound, console lent out: `SerialRelay`), and a watcher that reports how the VM
ended.

A VM outlives the daemon (QEMU is daemonized): `start` spawns one, `adopt` finds one again
after a daemon restart, `detach` lets go of one without stopping it. When QEMU exits for any
reason, `on_exit` is called once with how it ended: `shutdown` after a SHUTDOWN event (guest
power-off, `quit`, SIGTERM), `crash` when the process vanished without one (killed, died).

Whether a running VM is paused is QEMU's to say: its run state is read with `query-status`
whenever a STOP or RESUME event arrives (and on `refresh_state`), and `on_state` is called on
each change with the `Pause` (None once it runs again). A host I/O error that stops the VM is
announced by BLOCK_IO_ERROR first; its `nospace` flag says whether the host's storage is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from openhosting.hypervisor import process
from openhosting.hypervisor.argv import RunPaths, VmSpec
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.monitor import BlockStats, Monitor
from openhosting.hypervisor.serial_log import DEFAULT_LIMIT, SerialLogLimit, remove_log
from openhosting.hypervisor.serial_relay import SerialRelay

log = logging.getLogger("openhosting.hypervisor")

ExitCallback = Callable[[str, str], Awaitable[None]]
SHUTDOWN, CRASH = "shutdown", "crash"
# Why a VM is paused: the host's storage is full, another host I/O error, or else QEMU's own
# run state (`paused` after a monitor's `stop`, `internal-error`, ...).
NOSPACE, IO_ERROR = "nospace", "io-error"


@dataclass(frozen=True)
class Pause:
    """A VM that exists but does not run, and why (NOSPACE, IO_ERROR or QEMU's run state)."""

    reason: str


StateCallback = Callable[[str, "Pause | None"], Awaitable[None]]


def pause_of(status: str, nospace: bool) -> Pause | None:
    """The pause that QEMU's run state `status` means; None while it runs (or is leaving:
    `shutdown` is followed by the exit)."""
    if status in ("running", "shutdown"):
        return None
    if status == "io-error":
        return Pause(NOSPACE if nospace else IO_ERROR)
    return Pause(status)


class RunningVm:
    """One VM's process and monitor. Create with `start` or `adopt`."""

    def __init__(
        self,
        uuid: str,
        run_dir: Path,
        pid: int,
        monitor: Monitor,
        serial: SerialRelay,
        started: float,
    ):
        self.uuid = uuid
        self.run_dir = run_dir
        self.pid = pid
        self.monitor = monitor
        self.serial = serial
        self.started = started
        self._ending: str | None = None  # set by a SHUTDOWN event
        self._watcher: asyncio.Task[None] | None = None
        self.exited = asyncio.Event()
        self.pause: Pause | None = None  # as QEMU last said; a new VM runs
        self.on_state: StateCallback | None = None
        self._nospace = False  # the last I/O error that stopped the VM was ENOSPC

    @classmethod
    async def start(
        cls,
        spec: VmSpec,
        on_exit: ExitCallback,
        *,
        timeout: float = 30,
        serial_limit: SerialLogLimit = DEFAULT_LIMIT,
    ) -> RunningVm:
        """Spawn the VM of `spec`, attach to its serial port and connect to its monitor;
        undone if any step fails. The serial log starts empty."""
        remove_log(spec.paths.serial_log, serial_limit.files)
        pid = await process.spawn(spec, timeout=timeout)
        monitor = Monitor(spec.paths.qmp_socket)
        try:
            # The serial port first: the guest runs already and its output is lost until then.
            serial = await SerialRelay.attach(spec.paths, serial_limit, timeout=timeout)
            try:
                await monitor.connect(timeout=timeout)
            except BaseException:
                await serial.close()
                raise
        except BaseException:
            await process.kill(pid, spec.uuid)
            process.remove_run_files(spec.run_dir)
            raise
        vm = cls(spec.uuid, spec.run_dir, pid, monitor, serial, time.time())
        vm._watch(on_exit)
        return vm

    @classmethod
    async def adopt(
        cls,
        uuid: str,
        run_dir: Path,
        on_exit: ExitCallback,
        *,
        timeout: float = 10,
        serial_limit: SerialLogLimit = DEFAULT_LIMIT,
    ) -> RunningVm | None:
        """The VM of server `uuid` left running by a previous daemon, or None if there is
        none (its pidfile missing, stale, or naming another process). Its serial log goes on
        where the previous daemon left it, within the same bound."""
        pid = process.adopt(run_dir, uuid)
        if pid is None:
            return None
        paths = RunPaths(run_dir)
        monitor = Monitor(paths.qmp_socket)
        await monitor.connect(timeout=timeout)
        try:
            serial = await SerialRelay.attach(paths, serial_limit, timeout=timeout)
        except BaseException:
            await monitor.close()
            raise
        # The caller knows when it started.
        vm = cls(uuid, run_dir, pid, monitor, serial, started=0.0)
        vm._watch(on_exit)
        return vm

    def _watch(self, on_exit: ExitCallback) -> None:
        self._watcher = asyncio.create_task(self._watch_until_exit(on_exit))

    async def _watch_until_exit(self, on_exit: ExitCallback) -> None:
        async for event in self.monitor.events():
            if event.name == "SHUTDOWN":
                self._ending = SHUTDOWN
                log.info("event=vm_shutdown server=%s reason=%s", self.uuid, event.reason)
            elif event.name == "BLOCK_IO_ERROR" and event.data.get("action") == "stop":
                self._nospace = bool(event.data.get("nospace"))
                log.warning(
                    "event=vm_io_error server=%s node=%s operation=%s nospace=%s",
                    self.uuid, event.data.get("node-name"), event.data.get("operation"),
                    self._nospace,
                )  # fmt: skip
            elif event.name in ("STOP", "RESUME"):
                await self.refresh_state()
        # QEMU hung up: it is exiting. Wait for the process itself to be gone.
        while not await process.wait_exit(self.pid, timeout=30):
            if self.monitor.connected:
                break  # cannot happen while QEMU runs; never spin
            log.warning("event=vm_exit_slow server=%s pid=%s", self.uuid, self.pid)
        ending = self._ending or CRASH
        await self.monitor.close()  # collects the connection's end, so nothing dangles
        await self.serial.close()  # the log files stay, for whoever wants to know why
        process.remove_run_files(self.run_dir)
        self.exited.set()
        log.info("event=vm_exited server=%s how=%s", self.uuid, ending)
        await on_exit(self.uuid, ending)

    async def stop(self, timeout: float = 10) -> None:
        """Power off now: `quit`, then kill the process if it lingers. Returns once it has
        exited and `on_exit` has run."""
        try:
            await self.monitor.quit()
        except HypervisorError as error:
            log.warning("event=vm_quit_failed server=%s error=%s", self.uuid, error)
        if not await process.wait_exit(self.pid, timeout):
            await process.kill(self.pid, self.uuid, timeout=timeout)
        await self.wait_exited(timeout)

    async def kill(self, timeout: float = 10) -> None:
        """Stop the process with signals, for a VM whose monitor does not answer."""
        await process.kill(self.pid, self.uuid, timeout=timeout)
        await self.wait_exited(timeout)

    async def wait_exited(self, timeout: float) -> None:
        """Wait until the watcher has seen the exit and reported it."""
        try:
            await asyncio.wait_for(asyncio.shield(self._watcher_done()), timeout)
        except TimeoutError:
            raise HypervisorError(
                f"VM {self.uuid} did not finish exiting in {timeout:g} s"
            ) from None

    async def _watcher_done(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._watcher)

    async def refresh_state(self) -> None:
        """Read QEMU's run state; call `on_state` if the pause changed."""
        try:
            status = await self.monitor.query_status()
        except HypervisorError as error:
            log.debug("vm %s: no run state (%s)", self.uuid, error)  # exiting: the exit tells
            return
        pause = pause_of(status, self._nospace)
        if pause == self.pause:
            return
        self.pause = pause
        if pause is None:
            log.info("event=vm_resumed server=%s", self.uuid)
        else:
            log.warning("event=vm_paused server=%s reason=%s", self.uuid, pause.reason)
        if self.on_state is not None:
            await self.on_state(self.uuid, pause)

    async def resume(self) -> None:
        """Run a paused VM again (`cont`); a write held by a full disk is retried, and
        pauses the VM again if the disk is still full."""
        await self.monitor.cont()
        await self.refresh_state()

    async def powerdown(self) -> None:
        await self.monitor.system_powerdown()

    async def reset(self) -> None:
        await self.monitor.system_reset()

    async def vcpu_threads(self) -> list[int]:
        """The host thread ids of the VM's vCPUs."""
        return await self.monitor.query_vcpu_threads()

    async def blockstats(self) -> dict[str, BlockStats]:
        return await self.monitor.query_blockstats()

    async def set_vnc_password(self, password: str | None) -> None:
        """Set the VNC password, or with None refuse every login from now on."""
        if password:
            await self.monitor.set_vnc_password(password)
        else:
            await self.monitor.expire_vnc_password()

    async def detach(self) -> None:
        """Let go of the VM without stopping it (the daemon is shutting down)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.monitor.close()
        await self.serial.close()
