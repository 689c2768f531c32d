"""The resumer of VMs paused by a full host disk: it resumes one only once every file system
its drives live on has room, and lets go of one that resumed or ended. The VM is a stand-in
here (its QMP answers scripted); the real QEMU case is tests/integration/test_server_paused.py."""

import asyncio
from pathlib import Path

from openhosting.hypervisor.driver import PauseReason
from openhosting.hypervisor.space_resume import SpaceResumer, free_bytes
from openhosting.hypervisor.vm import Pause


class PausedVm:
    """What the resumer uses of a RunningVm."""

    def __init__(self, files: list[Path], reason: str = PauseReason.NOSPACE) -> None:
        self.uuid = str(files[0])
        self.pause: Pause | None = Pause(reason)
        self.exited = asyncio.Event()
        self.monitor = self
        self.files = files
        self.resumed = 0

    async def query_writable_files(self) -> list[Path]:
        return self.files

    async def resume(self) -> None:
        self.resumed += 1
        self.pause = None


async def test_a_vm_resumes_once_its_file_systems_have_room(tmp_path: Path) -> None:
    vm = PausedVm([tmp_path / "a.img"])
    resumer = SpaceResumer(interval=0.01, free=free_bytes(tmp_path) * 4 + (1 << 40))
    resumer.watch(vm)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert vm.resumed == 0  # never that much room
    await resumer.close()

    resumer = SpaceResumer(interval=0.01, free=1)
    resumer.watch(vm)  # type: ignore[arg-type]
    for _ in range(100):
        if vm.resumed:
            break
        await asyncio.sleep(0.01)
    assert vm.resumed == 1 and vm.pause is None
    await resumer.close()


async def test_a_vm_paused_for_another_reason_or_gone_is_left_alone(tmp_path: Path) -> None:
    resumer = SpaceResumer(interval=0.01, free=1)
    other = PausedVm([tmp_path / "a.img"], reason=PauseReason.IO_ERROR)
    gone = PausedVm([tmp_path / "b.img"])
    gone.exited.set()
    for vm in (other, gone):
        resumer.watch(vm)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert (other.resumed, gone.resumed) == (0, 0)
    await resumer.close()
