"""What the driver interface gives every implementation: running a saved state's stream."""

import os

import pytest

from openhosting.hypervisor.driver import run_state_stream


def test_a_state_stream_gets_its_end_of_the_pipe_which_is_closed_after() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # a write end left open fails the read, never hangs it
    try:
        run_state_stream(lambda fd: os.write(fd, b"state"), write_end)
        assert os.read(read_end, 100) == b"state"
        assert os.read(read_end, 100) == b""  # the reader sees the end of the stream
    finally:
        os.close(read_end)


def test_a_failing_state_stream_still_closes_its_end_so_the_other_is_not_left_waiting() -> None:
    read_end, write_end = os.pipe()

    def failing_sink(fd: int) -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space"):
            run_state_stream(failing_sink, read_end)
        with pytest.raises(BrokenPipeError):  # nobody reads: the writer is told at once
            os.write(write_end, b"state")
    finally:
        os.close(write_end)
