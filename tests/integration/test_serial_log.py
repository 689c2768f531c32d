"""A guest cannot exhaust the host with its serial port (docs/security.md): a real tiny guest
under TCG floods ttyS0 with megabytes, and the log stays within its bound, keeps the last
output, and the console still answers, also after the daemon let go of the VM and took it
back (a restart). What is kept of a destroyed server's log is readable, and pruned."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.admin import tool as admin
from openhosting.hypervisor import process
from openhosting.hypervisor.driver import VmEnd
from openhosting.hypervisor.serial_log import SerialLogLimit, log_files, read_log
from openhosting.hypervisor.spec import DiskSpec, RunPaths, VmSpec
from openhosting.hypervisor.vm import RunningVm
from openhosting.services.platform import Platform
from openhosting.services.servers.server_logs import SECONDS_PER_DAY
from testbed.build_guest import READY_MARKER
from testbed.daemon_process import Api, DaemonProcess, create_user
from testbed.serial_console import SerialConsole, wait_for_log
from tests.integration.server_helpers import create_server, upload_guest, wait_ready

BOOT_TIMEOUT = 60.0
FLOOD_TIMEOUT = 120.0
LIMIT = SerialLogLimit(file_bytes=16 * 1024, files=2)
# Floods of several times what the log keeps: every file rotated away more than once (floods
# of 2 MiB and 1 MiB, 64 and 32 times the bound, proved no more at many times the cost).
FLOOD_BYTES = 8 * LIMIT.total_bytes
# 73-byte lines; `yes` and `head` are busybox applets of the tiny guest.
FLOOD_LINE = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def flood(byte_count: int, marker: str, *, delay: int = 0) -> str:
    """A shell command printing `byte_count` bytes to the console, then `marker` (split in
    the command's own text, so the echo of the typed line does not contain it)."""
    pause = f"sleep {delay}; " if delay else ""
    return (
        f'{pause}yes {FLOOD_LINE} | head -c {byte_count}; echo; echo "{marker[:3]}""{marker[3:]}"'
    )


def log_sizes(paths: RunPaths) -> list[int]:
    return [
        file.stat().st_size for file in log_files(paths.serial_log, LIMIT.files) if file.exists()
    ]


async def wait_for_marker_within_bound(paths: RunPaths, marker: str) -> bytes:
    """Wait for `marker` in the log, checking all the while that the guest's writing never
    takes the log files (or any other file of the run directory) beyond the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_TIMEOUT
    checks = 0
    while True:
        assert all(size <= LIMIT.file_bytes for size in log_sizes(paths)), log_sizes(paths)
        others = [
            f
            for f in paths.directory.iterdir()
            if f.is_file() and not f.name.startswith("serial.log")
        ]
        assert sum(f.stat().st_size for f in others) < 64 * 1024, others  # no log of QEMU's own
        checks += 1
        kept = read_log(paths.serial_log, LIMIT.files)
        if marker.encode() in kept:
            return kept
        assert loop.time() < deadline, f"{marker} not logged after {FLOOD_TIMEOUT:g} s"
        await asyncio.sleep(0.1)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-sl-") as name:
        yield Path(name)


class Held:
    """The VMs a test started and holds; at the end each is let go of and killed."""

    def __init__(self) -> None:
        self.specs: list[VmSpec] = []
        self.vms: list[RunningVm] = []


@pytest.fixture
async def held() -> AsyncIterator[Held]:
    state = Held()
    yield state
    for vm in state.vms:
        await vm.detach()  # its monitor and serial connections
    for spec in state.specs:
        if (pid := process.adopt(spec.run_dir, spec.uuid)) is not None:
            await process.kill(pid, spec.uuid, timeout=5.0)


async def test_a_flooding_guest_keeps_its_log_bounded_across_a_daemon_restart(
    tiny_guest_image: Path, workdir: Path, held: Held
) -> None:
    disk = workdir / "disk.raw"
    shutil.copyfile(tiny_guest_image, disk)
    spec = VmSpec(
        uuid=str(uuid.uuid4()),
        smp=1,
        mem_mb=256,
        run_dir=workdir / "run",
        disks=(DiskSpec("ide:0:0", disk),),
        boot=("ide:0:0",),
    )
    paths = spec.paths
    exits: list[VmEnd] = []

    async def on_exit(_uuid: str, how: VmEnd) -> None:
        exits.append(how)

    held.specs.append(spec)
    vm = await RunningVm.start(spec, on_exit, serial_limit=LIMIT)
    held.vms.append(vm)
    await wait_for_log(paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)

    # 2 MiB while nobody holds the console: only the log takes it.
    console = await SerialConsole.open(paths.console_socket)
    await console.send(flood(FLOOD_BYTES, "OH-FLOOD-ONE"))
    await console.close()
    kept = await wait_for_marker_within_bound(paths, "OH-FLOOD-ONE")
    assert len(kept) > LIMIT.file_bytes  # rotated, the older file kept too
    assert b"\r\nOH-FLOOD-ONE\r\n" in kept[-100:]  # the last lines are there (then a prompt)
    assert f"{FLOOD_LINE}\r\n{FLOOD_LINE}".encode() in kept

    # The console still works, for one client at a time.
    console = await SerialConsole.open(paths.console_socket)
    try:
        assert await console.run("echo alive") == "alive"
        second = await SerialConsole.open(paths.console_socket)
        try:
            assert b"console busy" in await asyncio.wait_for(second._reader.read(100), 10)
        finally:
            await second.close()
        assert await console.run("echo still mine") == "still mine"
        # Printed once the daemon has let go, to nobody.
        await console.send(flood(200_000, "OH-WHILE-AWAY", delay=2))
        # The whole line must reach the guest first: QEMU discards typed input it has not
        # read yet when its client goes. Its tty echoes the line's end once it has it.
        await wait_for_log(paths.serial_log, '"OH-""WHILE-AWAY"', timeout=30)
    finally:
        await console.close()

    # The daemon stops (the VM runs on), and a new one adopts the VM.
    await vm.detach()
    assert not paths.console_socket.exists()
    before_away = read_log(paths.serial_log, LIMIT.files)
    await asyncio.sleep(8)  # the guest floods meanwhile, with no daemon attached
    # Nothing writes the log while no daemon runs: QEMU keeps none of the guest's output.
    assert read_log(paths.serial_log, LIMIT.files) == before_away
    adopted = await RunningVm.adopt(spec.uuid, spec.run_dir, on_exit, serial_limit=LIMIT)
    assert adopted is not None
    held.vms.append(adopted)
    console = await SerialConsole.open(paths.console_socket)
    try:
        assert await console.run("echo back", timeout=FLOOD_TIMEOUT) == "back"
        await console.send(flood(FLOOD_BYTES // 2, "OH-FLOOD-TWO"))
    finally:
        await console.close()
    kept = await wait_for_marker_within_bound(paths, "OH-FLOOD-TWO")
    assert b"\r\nOH-FLOOD-TWO\r\n" in kept[-100:]

    await adopted.stop()
    assert exits == [VmEnd.SHUTDOWN]
    # The log outlives the VM (its reason to exist); the sockets go.
    assert b"OH-FLOOD-TWO" in read_log(paths.serial_log, LIMIT.files)
    assert not paths.console_socket.exists() and not paths.serial_socket.exists()


async def test_a_real_daemon_killed_and_started_again_keeps_the_log_bounded(
    tmp_path: Path,
    run_dir: Path,
    daemons: list[DaemonProcess],
    daemon_env: dict[str, str],
    tiny_guest_image: Path,
) -> None:
    state = tmp_path / "state"
    env = {
        **daemon_env,
        "OH_HYPERVISOR_SERIAL_LOG_KIB": str(LIMIT.file_bytes // 1024),
        "OH_HYPERVISOR_SERIAL_LOG_FILES": str(LIMIT.files),
    }
    api = Api(create_user(state, timeout=30))
    daemons.append(DaemonProcess(state, tmp_path / "daemon.log", env=env))
    api.url = daemons[-1].url
    image = tiny_guest_image.read_bytes()
    drive = api.properties(
        "/drives/create", f"size {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{drive}/write", image)[0] == 204
    body = f"name flood\ncpu 2000\nmem 128\npersistent true\nide:0:0 {drive}\nboot ide:0:0"
    server = api.properties("/servers/create", body.encode())["server"]
    paths = RunPaths(run_dir / server)
    await wait_for_log(paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)

    console = await SerialConsole.open(paths.console_socket)
    await console.send(flood(FLOOD_BYTES // 2, "OH-BEFORE-KILL"))
    await console.close()
    await wait_for_marker_within_bound(paths, "OH-BEFORE-KILL")

    # The daemon dies without letting go; the next one adopts the VM and its serial port.
    daemons[-1].end(signal.SIGKILL)
    daemons.append(DaemonProcess(state, tmp_path / "daemon.log", env=env))
    api.url = daemons[-1].url
    status, _, answer = api.call(f"/servers/{server}/info")
    assert status == 200 and b"status active" in answer
    console = await SerialConsole.open(paths.console_socket)
    try:
        assert await console.run("echo adopted") == "adopted"
        await console.send(flood(FLOOD_BYTES // 2, "OH-AFTER-START"))
    finally:
        await console.close()
    kept = await wait_for_marker_within_bound(paths, "OH-AFTER-START")
    assert b"OH-BEFORE-KILL" not in kept  # rotated away by the newer flood

    status, headers, answer = api.call(f"/servers/{server}/log")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert len(answer) <= LIMIT.total_bytes and b"\r\nOH-AFTER-START\r\n" in answer
    assert api.call(f"/servers/{server}/stop", b" ")[0] == 204


async def test_a_destroyed_servers_log_is_kept_for_the_operator_then_pruned(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image)
    body = f"name gone\ncpu 2000\nmem 128\nide:0:0 {drive}\nboot ide:0:0"
    server = (await create_server(client, auth, body))["server"]
    await wait_ready(platform, server)
    # The owner reads the live log while the server exists.
    live = await client.get(f"/servers/{server}/log", headers=auth)
    assert live.status == 200 and READY_MARKER in await live.text()

    # Stopping a non-persistent server destroys it; its run directory goes, its log stays.
    assert (await client.post(f"/servers/{server}/stop", headers=auth)).status == 204
    assert (await client.get(f"/servers/{server}/info", headers=auth)).status == 404
    assert not platform.servers.run_dir(server).exists()
    kept = platform.config.state_path / "logs" / "servers" / f"{server}.log"
    assert READY_MARKER.encode() in kept.read_bytes()
    assert kept.stat().st_mode & 0o777 == 0o600
    # Gone for its owner (the server does not exist), there for the operator.
    gone = await client.get(f"/servers/{server}/log", headers=auth)
    assert gone.status == 404 and gone.headers["X-Elastic-Error"] == "missing"
    state = ["--state-dir", str(platform.config.state_path)]
    assert admin.main([*state, "server", "log", server]) == 0
    assert READY_MARKER in capsys.readouterr().out

    logs = platform.servers.lifecycle.logs
    assert logs.prune() == 0  # within its retention (7 days)
    assert logs.prune(now=kept.stat().st_mtime + 7 * SECONDS_PER_DAY + 1) == 1
    assert not kept.exists()
    assert admin.main([*state, "server", "log", server]) == 1
    assert "has no serial log" in capsys.readouterr().err


async def test_destroying_a_stopped_persistent_server_keeps_its_last_log(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    body = "name kept\ncpu 500\nmem 64\npersistent true"
    server = (await create_server(client, auth, body, stopped=True))["server"]
    # What its last run printed, as a previous VM left it in the run directory.
    run = RunPaths(platform.servers.run_dir(server))
    run.directory.mkdir(parents=True)
    (run.directory / "serial.log.1").write_bytes(b"older\n")
    run.serial_log.write_bytes(b"kernel panic: why it died\n")
    assert (await client.post(f"/servers/{server}/destroy", headers=auth)).status == 204
    assert not run.directory.exists()
    assert platform.servers.serial_log(server) == b"older\nkernel panic: why it died\n"
    other = str(uuid.uuid4())
    with pytest.raises(Exception, match="no serial log"):
        platform.servers.serial_log(other)
    with pytest.raises(Exception, match="could not be found"):
        platform.servers.serial_log("../../etc/passwd")
