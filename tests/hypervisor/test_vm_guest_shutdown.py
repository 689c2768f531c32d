"""A guest's power-off pauses QEMU (`-action shutdown=pause`): the driver lets `before_end`
read the VM one last time (its block counters), then ends it with `quit`; a VM found in that
state after a daemon restart is ended at once. Against a recording stand-in for QMP."""

import asyncio
from pathlib import Path
from typing import Any, cast

from openhosting.hypervisor.monitor import Monitor
from openhosting.hypervisor.serial_relay import SerialRelay
from openhosting.hypervisor.vm import RunningVm


class RecordingMonitor:
    def __init__(self, status: str) -> None:
        self.status, self.calls = status, []  # type: ignore[var-annotated]

    async def query_status(self) -> str:
        self.calls.append("query-status")
        return self.status

    async def quit(self) -> None:
        self.calls.append("quit")


def vm_with(monitor: RecordingMonitor) -> RunningVm:
    return RunningVm(
        "7c1b0c7e-0000-4000-8000-000000000001", Path("/nonexistent"), 1,
        cast(Monitor, monitor), cast(SerialRelay, None), started=0.0,
    )  # fmt: skip


async def test_a_guest_power_off_is_read_before_the_vm_is_ended() -> None:
    monitor = RecordingMonitor("shutdown")
    vm = vm_with(monitor)
    seen: list[Any] = []

    async def before_end(uuid: str) -> None:
        seen.append((uuid, list(monitor.calls)))

    vm.before_end = before_end
    await vm.end_if_powered_off()
    assert vm._ender is not None
    await vm._ender
    assert seen == [(vm.uuid, ["query-status"])]  # read while QEMU still answered
    assert monitor.calls == ["query-status", "quit"]


async def test_a_failing_or_stuck_reader_never_keeps_a_powered_off_vm_alive() -> None:
    for trouble in ("fails", "hangs"):
        monitor = RecordingMonitor("shutdown")
        vm = vm_with(monitor)

        async def before_end(uuid: str, trouble: str = trouble) -> None:
            if trouble == "fails":
                raise OSError("database locked")
            await asyncio.sleep(3600)

        vm.before_end = before_end
        await vm.end_if_powered_off()
        assert vm._ender is not None
        await asyncio.wait_for(vm._ender, 10)  # ENDING_TIMEOUT bounds a stuck reader
        assert monitor.calls[-1] == "quit"


async def test_a_running_vm_is_left_running() -> None:
    monitor = RecordingMonitor("running")
    vm = vm_with(monitor)
    await vm.end_if_powered_off()
    assert vm._ender is None and monitor.calls == ["query-status"]
