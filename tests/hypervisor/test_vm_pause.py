"""What QEMU's run state means for a server's status (`paused` and why)."""

import pytest

from openhosting.hypervisor.driver import PauseReason
from openhosting.hypervisor.vm import Pause, pause_of


@pytest.mark.parametrize("status", ["running", "shutdown"])
def test_a_running_or_leaving_vm_is_not_paused(status: str) -> None:
    assert pause_of(status, nospace=True) is None


def test_an_io_error_stop_says_whether_the_host_disk_was_full() -> None:
    assert pause_of("io-error", nospace=True) == Pause(PauseReason.NOSPACE)
    assert pause_of("io-error", nospace=False) == Pause(PauseReason.IO_ERROR)


@pytest.mark.parametrize("status", ["paused", "internal-error", "guest-panicked", "suspended"])
def test_any_other_stop_is_a_pause_named_by_qemu(status: str) -> None:
    assert pause_of(status, nospace=False) == Pause(status)
