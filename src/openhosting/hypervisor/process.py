"""QEMU processes: start one daemonized, find it again from its pidfile, stop it.

A VM is not the daemon's child: QEMU runs with `-daemonize` and writes a pidfile, so it
survives a daemon restart, and the daemon cannot `wait()` for it. Pids are reused, so a pid is
trusted only while /proc/PID/cmdline holds `guest=<server uuid>` (QEMU's `-name`). Exits are
watched through a pidfd (Linux >= 5.3), which also makes signals race-free; without pidfds
/proc is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from pathlib import Path

from openhosting import pidwait
from openhosting.hypervisor.argv import build_qemu_argv
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import RunPaths, VmSpec

log = logging.getLogger(__name__)

# Waiting for the end of a process, for whoever waits for a VM.
wait_exit = pidwait.wait_exit


async def spawn(spec: VmSpec, *, timeout: float = 30.0) -> int:
    """Start the VM of `spec` daemonized and return its pid.

    Returns once QEMU has set up its devices and sockets (its foreground part exits then), so
    the QMP socket is ready. Raises `HypervisorError` with QEMU's own message if it refuses to
    start, or if the server already has a running VM.
    """
    paths = spec.paths
    argv = build_qemu_argv(spec)
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (running := adopt(paths.directory, spec.uuid)) is not None:
        raise HypervisorError(f"server {spec.uuid} already has a running VM (pid {running})")
    # Leftovers of a crashed VM would make QEMU fail to bind or fool `adopt`.
    for stale in (paths.pidfile, paths.qmp_socket, paths.serial_socket, paths.console_socket):
        stale.unlink(missing_ok=True)
    paths.argv_file.write_text(shlex.join(argv) + "\n")

    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        await _kill_half_started(paths, spec.uuid)
        raise HypervisorError(f"QEMU did not finish starting within {timeout:g} s") from None
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip().replace("\n", "; ")
        raise HypervisorError(f"QEMU failed to start: {message or f'exit {process.returncode}'}")
    pid = adopt(paths.directory, spec.uuid)
    if pid is None:
        raise HypervisorError("QEMU started but its pidfile names no running VM")
    log.debug("qemu started server=%s pid=%d", spec.uuid, pid)
    return pid


def adopt(run_dir: Path, server_uuid: str) -> int | None:
    """The pid of the server's running QEMU according to its pidfile, or None.

    A pidfile whose process is gone, or is now some other program, counts as no VM.
    """
    try:
        text = RunPaths(run_dir).pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if is_vm_process(pid, server_uuid) else None


def is_vm_process(pid: int, server_uuid: str) -> bool:
    """Whether `pid` is alive (not a zombie) and is the QEMU of the server (its `-name`)."""
    if pidwait.exited(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # `-name guest=UUID` is ours; a bare UUID could be any process reading the run directory.
    marker = f"guest={server_uuid}".encode()
    return any(arg.startswith(marker) for arg in cmdline.split(b"\0"))


async def kill(pid: int, server_uuid: str, *, timeout: float = 10.0) -> None:
    """Stop the VM process: SIGTERM (QEMU exits cleanly), then SIGKILL after `timeout` s.

    Does nothing if `pid` is no longer the server's QEMU. Raises `HypervisorError` if the
    process survives SIGKILL for another `timeout` seconds.
    """
    pidfd = pidwait.open_pidfd(pid)
    try:
        # Checked after opening the pidfd: from here on it cannot be another process.
        if not is_vm_process(pid, server_uuid):
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            _send_signal(pidfd, pid, signum)
            exited = (
                await pidwait.wait_pidfd(pidfd, pid, timeout)
                if pidfd is not None
                else await pidwait.poll_exit(pid, timeout)
            )
            if exited:
                log.debug("qemu stopped server=%s pid=%d signal=%s", server_uuid, pid, signum.name)
                return
        raise HypervisorError(f"QEMU process {pid} survived SIGKILL for {timeout:g} s")
    finally:
        if pidfd is not None:
            os.close(pidfd)


def remove_run_files(run_dir: Path) -> None:
    """Remove what only a running VM needs (pidfile, sockets); keep the logs and argv."""
    paths = RunPaths(run_dir)
    for path in (paths.pidfile, paths.qmp_socket, paths.serial_socket, paths.console_socket):
        path.unlink(missing_ok=True)


def _send_signal(pidfd: int | None, pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)


async def _kill_half_started(paths: RunPaths, server_uuid: str) -> None:
    # The foreground QEMU hung after forking: its daemon half may have written the pidfile.
    if (pid := adopt(paths.directory, server_uuid)) is not None:
        await kill(pid, server_uuid, timeout=5.0)
