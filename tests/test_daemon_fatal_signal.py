"""A daemon that dies of a fatal signal (SIGBUS, SIGSEGV, SIGFPE, SIGABRT, SIGILL) leaves the
Python stack of each of its threads in its log: the crash campaign's daemon once died of
SIGBUS with nothing in its log, only a refused connection to tell of it."""

import os
import signal
from pathlib import Path

from testbed.daemon_process import running_daemon


def test_a_daemon_killed_by_sigbus_leaves_its_threads_stacks_in_its_log(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        os.kill(daemon.process.pid, signal.SIGBUS)
        # It still dies of the signal: whoever waits for it sees which one.
        assert daemon.process.process.wait(timeout=30) == -signal.SIGBUS
    log = daemon.log.read_text(errors="replace")
    assert "Fatal Python error: Bus error" in log, log
    assert "Current thread" in log and 'File "' in log, log
