"""passt processes on a real passt: started daemonized, found again by a new daemon from their
pidfiles, stopped, and ending by themselves when their VM (the socket's one client) goes.

Nothing here sends traffic: passt only binds its unix socket until a VM connects.
"""

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openhosting.hypervisor.process import wait_exit
from openhosting.network import passt
from openhosting.network.driver import NicPlan
from openhosting.network.passt import PasstFiles
from openhosting.network.pool import AddressPool
from openhosting.network.user_mode import DEFAULT_ADDRESSING, UserNetwork, passt_account

SERVER_A = "0f962616-2071-4173-be79-7dd084271edf"
SERVER_B = "5d5b8c52-4b4b-4d0e-9a55-0c3a1c7a2f10"
POOL = AddressPool.parse("192.0.2.0/24", "192.0.2.1", "192.0.2.1", "192.0.2.10-192.0.2.20")


@pytest.fixture
async def passt_dir() -> AsyncIterator[Path]:
    """A short run directory (socket paths are limited) that passt's account may write in;
    every passt left in it is stopped afterwards."""
    if shutil.which("passt") is None:
        pytest.skip("passt is not installed (Debian package passt)")
    run_dir = Path(tempfile.mkdtemp(prefix="ohp-", dir="/tmp"))
    run_dir.chmod(0o755)
    directory = run_dir / "network" / "passt"
    directory.mkdir(parents=True)
    if (account := passt_account("auto")) is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    try:
        yield directory
    finally:
        for files in passt.running_files(directory):
            await passt.stop(files)
        shutil.rmtree(run_dir)


def user_of(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


async def start(directory: Path, server: str, index: int = 0) -> tuple[PasstFiles, int]:
    files = PasstFiles(directory, server, index)
    account = passt_account("auto")
    pid = await passt.start(files, DEFAULT_ADDRESSING, account.pw_name if account else None)
    return files, pid


async def test_passt_runs_daemonized_unprivileged_and_is_found_again_by_its_pidfile(
    passt_dir: Path,
) -> None:
    files, pid = await start(passt_dir, SERVER_A)
    assert files.socket.is_socket()
    assert passt.adopt(files) == pid
    assert user_of(pid) != 0  # passt never stays root
    # Another NIC's files do not claim this process.
    assert passt.adopt(PasstFiles(passt_dir, SERVER_A, 1)) is None


async def test_a_pidfile_naming_some_other_process_is_not_adopted(passt_dir: Path) -> None:
    files = PasstFiles(passt_dir, SERVER_A, 0)
    files.pidfile.write_text(f"{os.getpid()}\n")  # alive, but not this NIC's passt
    assert passt.adopt(files) is None
    await passt.stop(files)  # kills nothing, tidies the files
    assert not files.pidfile.exists()


async def test_a_new_daemon_keeps_the_passt_of_running_servers_and_stops_the_others(
    passt_dir: Path,
) -> None:
    kept, kept_pid = await start(passt_dir, SERVER_A)
    ended, ended_pid = await start(passt_dir, SERVER_B)
    daemon = UserNetwork(POOL, passt_dir.parent)
    await daemon.reconcile([NicPlan(SERVER_A, 0, "52:54:00:00:00:01")])
    assert passt.adopt(kept) == kept_pid
    assert await wait_exit(ended_pid, 5)
    assert not ended.socket.exists() and not ended.pidfile.exists()
    # The server's VM ends: its NIC is detached and passt stopped.
    await daemon.detach([NicPlan(SERVER_A, 0, "52:54:00:00:00:01")])
    assert await wait_exit(kept_pid, 5)
    assert passt.running_files(passt_dir) == []


async def test_passt_ends_by_itself_when_its_vm_disconnects(passt_dir: Path) -> None:
    files, pid = await start(passt_dir, SERVER_A)
    vm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await asyncio.get_running_loop().sock_connect(vm, str(files.socket))
    vm.close()  # QEMU exited
    assert await wait_exit(pid, 10)
