"""Finding and stopping VM processes, with stand-in processes instead of QEMU.

The stand-ins carry `guest=<uuid>` in their command line, as QEMU's `-name` does. They are
our children, so they linger as zombies until reaped: the driver must count a zombie as gone
(a daemonized QEMU is reaped by init, not by us).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openhosting import pidwait
from openhosting.hypervisor import process
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import RunPaths

SLEEPER = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)\n"

Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start() -> Iterator[Start]:
    children: list[subprocess.Popen[str]] = []

    def spawn(server: str, *, ignore_sigterm: bool = False) -> subprocess.Popen[str]:
        setup = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""
        child = subprocess.Popen(
            [sys.executable, "-c", SLEEPER.format(setup=setup), f"guest={server},x=y"],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        return child

    yield spawn
    for child in children:
        child.kill()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def write_pidfile(run_dir: Path, text: str) -> None:
    run_dir.mkdir(exist_ok=True)
    RunPaths(run_dir).pidfile.write_text(text)


def test_adopt_finds_the_process_whose_name_holds_the_server_uuid(
    tmp_path: Path, start: Start
) -> None:
    server = str(uuid.uuid4())
    child = start(server)
    write_pidfile(tmp_path, f"{child.pid}\n")
    assert process.adopt(tmp_path, server) == child.pid
    assert process.is_vm_process(child.pid, server)


def test_adopt_ignores_missing_garbled_stale_and_foreign_pidfiles(
    tmp_path: Path, start: Start
) -> None:
    server = str(uuid.uuid4())
    assert process.adopt(tmp_path, server) is None
    write_pidfile(tmp_path, "not a pid")
    assert process.adopt(tmp_path, server) is None
    # Our own process is alive but is not the server's VM.
    write_pidfile(tmp_path, str(os.getpid()))
    assert process.adopt(tmp_path, server) is None
    # Another server's VM.
    write_pidfile(tmp_path, str(start(str(uuid.uuid4())).pid))
    assert process.adopt(tmp_path, server) is None
    # A pid that no longer exists.
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    write_pidfile(tmp_path, str(gone.pid))
    assert process.adopt(tmp_path, server) is None


async def test_kill_stops_a_vm_with_sigterm(start: Start) -> None:
    server = str(uuid.uuid4())
    child = start(server)
    await process.kill(child.pid, server, timeout=10)
    assert not process.is_vm_process(child.pid, server)
    assert child.wait(timeout=10) == -15


async def test_kill_falls_back_to_sigkill_after_the_timeout(start: Start) -> None:
    server = str(uuid.uuid4())
    child = start(server, ignore_sigterm=True)
    await process.kill(child.pid, server, timeout=0.5)
    assert child.wait(timeout=10) == -9


async def test_kill_leaves_a_process_that_is_not_the_servers_vm_alone(start: Start) -> None:
    child = start(str(uuid.uuid4()))
    await process.kill(child.pid, str(uuid.uuid4()), timeout=0.5)
    assert child.poll() is None


async def test_kill_reports_a_process_that_survives_sigkill(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = str(uuid.uuid4())
    child = start(server, ignore_sigterm=True)

    async def never_exits(pidfd: int, pid: int, timeout: float) -> bool:
        return False

    monkeypatch.setattr(pidwait, "wait_pidfd", never_exits)
    with pytest.raises(HypervisorError, match="survived SIGKILL"):
        await process.kill(child.pid, server, timeout=0.1)


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "polling"])
async def test_wait_exit_sees_the_exit_or_times_out(
    start: Start, monkeypatch: pytest.MonkeyPatch, pidfds: bool
) -> None:
    if not pidfds:
        monkeypatch.setattr(pidwait, "open_pidfd", lambda pid: None)
    server = str(uuid.uuid4())
    child = start(server)
    assert not await process.wait_exit(child.pid, timeout=0.2)
    child.terminate()
    assert await process.wait_exit(child.pid, timeout=10)
    child.wait(timeout=10)
    assert await process.wait_exit(child.pid, timeout=0.1)


def test_remove_run_files_keeps_the_logs(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    for path in (
        paths.pidfile,
        paths.qmp_socket,
        paths.serial_socket,
        paths.console_socket,
        paths.serial_log,
        tmp_path / "serial.log.1",
        paths.argv_file,
    ):
        path.write_text("x")
    process.remove_run_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qemu.argv", "serial.log", "serial.log.1"]
