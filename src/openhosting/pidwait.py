"""Waiting for a host process to end, child of ours or not (QEMU, passt: daemonized).

Through a pidfd (Linux >= 5.3), which also makes signals race-free; without pidfds /proc is
polled. A zombie counts as ended: it only waits for its parent to reap it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

_POLL_INTERVAL = 0.05


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited (or is a zombie); False if it still runs after `timeout`."""
    pidfd = open_pidfd(pid)
    if pidfd is None:
        return await poll_exit(pid, timeout)
    try:
        return await wait_pidfd(pidfd, pid, timeout)
    finally:
        os.close(pidfd)


def open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except (AttributeError, OSError):
        # No pidfds (old kernel): callers fall back to signalling by pid and polling /proc.
        return None


def exited(pid: int) -> bool:
    """Gone, or a zombie: a zombie has exited and only waits for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_pidfd(pidfd: int, pid: int, timeout: float) -> bool:
    if exited(pid):
        return True
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    # A pidfd becomes readable when the process exits, child of ours or not.
    loop.add_reader(pidfd, on_readable)
    try:
        await asyncio.wait_for(readable, timeout)
        return True
    except TimeoutError:
        return exited(pid)
    finally:
        loop.remove_reader(pidfd)


async def poll_exit(pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not exited(pid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True
