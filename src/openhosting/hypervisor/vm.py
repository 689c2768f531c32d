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
import fcntl
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from openhosting.hypervisor import process
from openhosting.hypervisor.driver import (
    ENDING_TIMEOUT,
    BlockStats,
    PauseReason,
    StateStream,
    VmEnd,
    run_state_stream,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.monitor import Monitor
from openhosting.hypervisor.serial_log import DEFAULT_LIMIT, SerialLogLimit, remove_log
from openhosting.hypervisor.serial_relay import SerialRelay
from openhosting.hypervisor.spec import RunPaths, VmSpec
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.hypervisor")

ExitCallback = Callable[[str, VmEnd], Awaitable[None]]
# Called when the guest has powered itself off, before its VM is ended (QEMU only pauses it:
# `-action shutdown=pause`), e.g. to read its counters one last time.
EndingCallback = Callable[[str], Awaitable[None]]
# (How long that may take before the VM is ended anyway: `ENDING_TIMEOUT`.)


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
        return Pause(PauseReason.NOSPACE if nospace else PauseReason.IO_ERROR)
    return Pause(status)


_STATE_FD = "saved-state"
_PIPE_BYTES = 1 << 20


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
        self._ending: VmEnd | None = None  # set by a SHUTDOWN event
        self.before_end: EndingCallback | None = None
        self._ender: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.exited = asyncio.Event()
        self.pause: Pause | None = None  # as QEMU last said; a new VM runs
        self.on_state: StateCallback | None = None
        self._nospace = False  # the last I/O error that stopped the VM was ENOSPC
        self.reported_io_errors = 0  # host I/O errors passed on to the guest as its disk's

    @classmethod
    async def start(
        cls,
        spec: VmSpec,
        on_exit: ExitCallback,
        *,
        timeout: float = 30,
        serial_limit: SerialLogLimit = DEFAULT_LIMIT,
        saved_state: StateStream | None = None,
    ) -> RunningVm:
        """Spawn the VM of `spec`, attach to its serial port and connect to its monitor;
        undone if any step fails. The serial log starts empty, except for a VM restored
        from `saved_state` (with `spec.incoming`), whose log goes on: it runs on from where
        it was saved instead of booting. With `spec.incoming` and no saved state it waits,
        paused, for a live migration (migration.py)."""
        if saved_state is not None and not spec.incoming:
            raise ValueError("a saved state goes with spec.incoming")
        if not spec.incoming:
            remove_log(spec.paths.serial_log, serial_limit.files)
        async with Reverter() as revert:
            pid = await process.spawn(spec, timeout=timeout)
            revert.add(functools.partial(process.remove_run_files, spec.run_dir))
            revert.add(functools.partial(process.kill, pid, spec.uuid))
            # The serial port first: the guest runs already and its output is lost until then.
            serial = await SerialRelay.attach(spec.paths, serial_limit, timeout=timeout)
            revert.add(serial.close)
            monitor = Monitor(spec.paths.qmp_socket)
            revert.add(monitor.close)
            await monitor.connect(timeout=timeout)
            if saved_state is not None:
                await _load_state(monitor, saved_state, timeout)
            revert.success()
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
        async with Reverter() as revert:
            revert.add(monitor.close)
            serial = await SerialRelay.attach(paths, serial_limit, timeout=timeout)
            revert.success()
        # The caller knows when it started.
        vm = cls(uuid, run_dir, pid, monitor, serial, started=0.0)
        vm._watch(on_exit)
        return vm

    def _watch(self, on_exit: ExitCallback) -> None:
        self._watcher = asyncio.create_task(self._watch_until_exit(on_exit))

    async def _watch_until_exit(self, on_exit: ExitCallback) -> None:
        async for event in self.monitor.events():
            if event.name == "SHUTDOWN":
                self._ending = VmEnd.SHUTDOWN
                log.info("event=vm_shutdown server=%s reason=%s", self.uuid, event.reason)
                if event.data.get("guest"):
                    self._end_after_guest_shutdown()
            elif event.name == "BLOCK_IO_ERROR" and event.data.get("action") == "stop":
                self._nospace = bool(event.data.get("nospace"))
                log.warning(
                    "event=vm_io_error server=%s node=%s operation=%s nospace=%s",
                    self.uuid, event.data.get("node-name"), event.data.get("operation"),
                    self._nospace,
                )  # fmt: skip
            elif event.name == "BLOCK_IO_ERROR":
                self._reported_io_error(event.data)
            elif event.name in ("STOP", "RESUME"):
                await self.refresh_state()
        # QEMU hung up: it is exiting. Wait for the process itself to be gone.
        while not await process.wait_exit(self.pid, timeout=30):
            if self.monitor.connected:
                break  # cannot happen while QEMU runs; never spin
            log.warning("event=vm_exit_slow server=%s pid=%s", self.uuid, self.pid)
        ending = self._ending or VmEnd.CRASH
        await self.monitor.close()  # collects the connection's end, so nothing dangles
        await self.serial.close()  # the log files stay, for whoever wants to know why
        process.remove_run_files(self.run_dir)
        self.exited.set()
        log.info("event=vm_exited server=%s how=%s", self.uuid, ending)
        await on_exit(self.uuid, ending)

    def _reported_io_error(self, data: Mapping[str, object]) -> None:
        """A host I/O error that QEMU passed on to the guest (`rerror=report`, or a write's
        error other than ENOSPC): the VM runs on and the guest sees a failing disk, so the
        operator must hear of the host's. A failing disk fails every request of a busy guest:
        logged at the 1st, 2nd, 4th, 8th, ... error, with the count, not at each one."""
        self.reported_io_errors += 1
        count = self.reported_io_errors
        if count & (count - 1) == 0:
            log.warning(
                "event=vm_io_error server=%s node=%s operation=%s action=%s count=%d",
                self.uuid, data.get("node-name"), data.get("operation"), data.get("action"),
                count,
            )  # fmt: skip

    def _end_after_guest_shutdown(self) -> None:
        """The guest powered off and QEMU paused (`-action shutdown=pause`): let `before_end`
        look at the VM, then end it. In a task: the event loop of the watcher goes on."""
        if self._ender is None:
            self._ender = asyncio.create_task(self._end_guest_shutdown())

    async def _end_guest_shutdown(self) -> None:
        if self.before_end is not None:
            try:
                async with asyncio.timeout(ENDING_TIMEOUT):
                    await self.before_end(self.uuid)
            except Exception as error:  # never keeps a powered-off VM alive
                log.warning("event=vm_before_end_failed server=%s error=%s", self.uuid, error)
        try:
            await self.monitor.quit()
        except HypervisorError as error:
            log.warning("event=vm_quit_failed server=%s error=%s", self.uuid, error)
            await process.kill(self.pid, self.uuid)

    async def end_if_powered_off(self) -> None:
        """A VM found paused after its guest's power-off (while no daemon ran) is ended now,
        as the guest asked."""
        try:
            status = await self.monitor.query_status()
        except HypervisorError:
            return
        if status == "shutdown":
            self._ending = VmEnd.SHUTDOWN
            self._end_after_guest_shutdown()

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

    async def save_state(self, sink: StateStream, timeout: float = 120) -> None:
        """Pause the guest and stream its memory and device state into `sink`. On return the
        state is whole and the guest stays paused (the caller keeps the state, then `stop`s
        the VM); if it cannot be saved, the guest runs on and `HypervisorError` is raised."""
        read_end, write_end = _state_pipe()
        with Reverter() as revert:
            revert.add(functools.partial(os.close, read_end))
            try:
                await self.monitor.pass_fd(_STATE_FD, write_end)
            finally:
                os.close(write_end)  # QEMU holds its own copy now
            revert.success()
        reading = asyncio.create_task(asyncio.to_thread(run_state_stream, sink, read_end))
        async with Reverter() as revert:
            # Undone in reverse: the reader ends first (QEMU closes its end when the
            # migration ends, failed or not), then the guest runs on.
            revert.add(self._run_on)
            revert.add(functools.partial(_settle, reading, timeout))
            try:
                await self.monitor.stop_vcpus()
                await self.monitor.migrate(f"fd:{_STATE_FD}")
                await self.monitor.wait_migration(timeout)
                await asyncio.wait_for(asyncio.shield(reading), timeout)
            except OSError as error:
                raise HypervisorError(f"cannot store the state of {self.uuid}: {error}") from error
            revert.success()

    async def _run_on(self) -> None:
        """Let the guest run again after its state could not be saved (if QEMU still can)."""
        with contextlib.suppress(HypervisorError):
            await self.monitor.cont()

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


def _state_pipe() -> tuple[int, int]:
    """A pipe for a saved state, with room for 1 MiB: fewer wake-ups on both sides."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # a smaller pipe only costs speed
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    return read_end, write_end


async def _load_state(monitor: Monitor, source: StateStream, timeout: float) -> None:
    """Feed a QEMU started with -incoming defer its saved state, then let the guest run."""
    read_end, write_end = _state_pipe()
    with Reverter() as revert:
        revert.add(functools.partial(os.close, write_end))
        try:
            await monitor.pass_fd(_STATE_FD, read_end)
        finally:
            os.close(read_end)
        revert.success()
    writing = asyncio.create_task(asyncio.to_thread(run_state_stream, source, write_end))
    async with Reverter() as revert:
        # The writer ends once QEMU (killed by the caller if need be) closes the pipe.
        revert.add(functools.partial(writing.add_done_callback, _collect))
        await monitor.migrate_incoming(f"fd:{_STATE_FD}")
        # A source that fails ends the wait at once: QEMU 7.2 fed an empty or cut-off
        # stream may wait for more forever rather than fail.
        migration = asyncio.create_task(monitor.wait_migration(timeout))
        revert.add(functools.partial(_cancel, migration))
        await asyncio.wait(
            {migration, writing}, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION
        )
        if writing.done() and (feed_error := writing.exception()) is not None:
            raise HypervisorError(f"cannot feed the saved state: {feed_error}") from feed_error
        await asyncio.wait_for(asyncio.shield(migration), timeout)
        await asyncio.wait_for(asyncio.shield(writing), timeout)
        revert.success()
    await monitor.cont()


async def _settle(task: asyncio.Task[object], timeout: float) -> None:
    """Wait (bounded) for `task` to end, whatever its outcome."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(task), timeout)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def _collect(task: asyncio.Task[object]) -> None:
    # Its error, if any, was reported another way (or mattered less than QEMU's own).
    if not task.cancelled():
        task.exception()
