"""Resuming VMs that a full host disk paused, once the platform has room again.

QEMU pauses a VM whose write met ENOSPC (`werror=enospc`) and keeps the write to retry it on
`cont`. While such a VM stays paused, its host files' file systems are checked every few
seconds; when each has `free_bytes` free, the VM is resumed. A resumed VM whose disk fills
again is paused again by QEMU, and watched again: nothing the guest wrote is lost meanwhile.
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from openhosting.hypervisor.driver import (
    PauseReason,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.vm import RunningVm

log = logging.getLogger("openhosting.hypervisor")

CHECK_SECONDS = 2.0
FREE_BYTES = 4 << 20  # room for more than one guest write before QEMU pauses again


def free_bytes(path: Path) -> int:
    """What an unprivileged writer may still write on the file system holding `path`."""
    space = os.statvfs(path)
    return space.f_bavail * space.f_frsize


class SpaceResumer:
    """One watch per VM paused for lack of space."""

    def __init__(self, *, interval: float = CHECK_SECONDS, free: int = FREE_BYTES) -> None:
        self._interval = interval
        self._free = free
        self._watches: dict[str, asyncio.Task[None]] = {}

    def watch(self, vm: RunningVm) -> None:
        """Resume `vm` once it has room (no-op if it is watched already)."""
        current = self._watches.get(vm.uuid)
        if current is not None and not current.done():
            return
        task = asyncio.create_task(self._resume_when_room(vm))
        self._watches[vm.uuid] = task
        task.add_done_callback(lambda _: self._forget(vm.uuid, task))

    def _forget(self, uuid: str, task: asyncio.Task[None]) -> None:
        if self._watches.get(uuid) is task:
            del self._watches[uuid]

    async def _resume_when_room(self, vm: RunningVm) -> None:
        while (
            vm.pause is not None
            and vm.pause.reason == PauseReason.NOSPACE
            and not vm.exited.is_set()
        ):
            await asyncio.sleep(self._interval)
            try:
                files = await vm.monitor.query_writable_files()
                if not await asyncio.to_thread(self._has_room, files):
                    continue
                log.info("event=vm_resume_after_space server=%s", vm.uuid)
                await vm.resume()
            except (HypervisorError, OSError) as error:
                # The VM may be leaving (its exit ends this watch); otherwise try again later.
                log.warning("event=vm_resume_failed server=%s error=%s", vm.uuid, error)

    def _has_room(self, files: list[Path]) -> bool:
        return all(free_bytes(directory) >= self._free for directory in {f.parent for f in files})

    async def cancel(self, uuid: str) -> None:
        task = self._watches.pop(uuid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for uuid in list(self._watches):
            await self.cancel(uuid)
