"""QemuDriver's CPU quota: a VM's threads are moved into its cgroups off the event loop (the
kernel can take tens of ms to move a process on a busy host, and many starts at once would
each hold the loop that long)."""

import asyncio
import threading
from pathlib import Path
from typing import cast

import pytest

from openhosting.config import HypervisorSettings
from openhosting.hypervisor import qemu_driver
from openhosting.hypervisor.cpu_quota import CgroupLayout
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.vm import RunningVm

SERVER = "0f962616-2071-4173-be79-7dd084271edf"


class StartedVm:
    """What `_limit_cpu` reads of a started VM."""

    uuid, pid = SERVER, 4242

    async def vcpu_threads(self) -> list[int]:
        return [4245]


def test_a_vms_threads_are_placed_in_their_cgroup_while_the_loop_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_ran = threading.Event()
    placed: list[tuple[str, int, list[int], int]] = []

    def place(layout: CgroupLayout, server: str, pid: int, tids: list[int], quota: int) -> None:
        # Slow, as on a busy host: the loop must get to run meanwhile.
        assert loop_ran.wait(timeout=5), "the event loop was held while the threads moved"
        placed.append((server, pid, list(tids), quota))

    monkeypatch.setattr(qemu_driver, "place_vm_threads", place)
    layout = CgroupLayout(tmp_path / "cpu", 1)
    driver = QemuDriver(HypervisorSettings(), tmp_path / "run", tmp_path / "state", cgroup=layout)

    async def scenario() -> None:
        async def other_work() -> None:
            await asyncio.sleep(0.01)
            loop_ran.set()

        other = asyncio.create_task(other_work())
        await driver._limit_cpu(cast(RunningVm, StartedVm()), 500)
        await other

    asyncio.run(scenario())
    assert placed == [(SERVER, 4242, [4245], 25_000)]
