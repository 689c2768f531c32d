"""The QEMU driver against real QEMU (TCG) running the tiny guest, one VM at a time.

Each test boots one VM and checks several behaviours of it, because a boot costs ~10 s here.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor import process
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.monitor import Monitor
from openhosting.hypervisor.serial_log import DEFAULT_LIMIT
from openhosting.hypervisor.serial_relay import SerialRelay
from openhosting.hypervisor.spec import DiskSpec, NicSpec, VmSpec, VncSpec
from testbed.build_guest import BOOT_MARKER, LEASE_MARKER, POWEROFF_MARKER, READY_MARKER
from testbed.serial_console import SerialConsole, read_serial_log, wait_for_log, wait_for_matches

BOOT_TIMEOUT = 60.0
LEASE_TIMEOUT = 30.0
PASSPHRASE = "correct horse battery staple"

Launch = Callable[[VmSpec], Awaitable[tuple[int, Monitor]]]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-hv-") as name:
        yield Path(name)


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start VMs with their serial relay (the log, the console); whatever is still running
    at the end of the test is killed."""
    specs: list[VmSpec] = []
    monitors: list[Monitor] = []
    relays: list[SerialRelay] = []

    async def start(spec: VmSpec) -> tuple[int, Monitor]:
        specs.append(spec)
        pid = await process.spawn(spec)
        relays.append(await SerialRelay.attach(spec.paths, DEFAULT_LIMIT))
        monitor = Monitor(spec.paths.qmp_socket)
        monitors.append(monitor)
        await monitor.connect()
        return pid, monitor

    yield start
    for monitor in monitors:
        await monitor.close()
    for relay in relays:
        await relay.close()
    for spec in specs:
        if (pid := process.adopt(spec.run_dir, spec.uuid)) is not None:
            await process.kill(pid, spec.uuid, timeout=5.0)


def copy_disk(image: Path, target: Path) -> Path:
    shutil.copyfile(image, target)
    target.chmod(0o644)
    return target


def spec_for(
    workdir: Path,
    *disks: DiskSpec,
    boot: str,
    nics: tuple[NicSpec, ...] = (),
    vnc: VncSpec | None = None,
) -> VmSpec:
    return VmSpec(
        uuid=str(uuid.uuid4()),
        smp=1,
        mem_mb=256,
        run_dir=workdir / "run",
        disks=disks,
        boot=(boot,),
        nics=nics,
        vnc=vnc,
    )


async def test_ide_guest_boots_with_cdrom_nic_and_growing_disk_counters(
    tiny_guest_image: Path, workdir: Path, launch: Launch
) -> None:
    mac = "52:54:00:0a:0b:0c"
    cdrom = workdir / "cd.iso"
    cdrom.write_bytes(b"\0" * 2048 * 16)
    spec = spec_for(
        workdir,
        DiskSpec("ide:0:0", copy_disk(tiny_guest_image, workdir / "disk.raw")),
        DiskSpec("ide:1:0", cdrom, media="cdrom"),
        boot="ide:0:0",
        nics=(NicSpec(0, "e1000", mac),),
        vnc=VncSpec("127.0.0.1", 77),
    )
    pid, monitor = await launch(spec)
    assert await monitor.query_status() == "running"
    await monitor.set_vnc_password("secret1")
    await monitor.expire_vnc_password()

    await wait_for_log(spec.paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)
    # The marker may follow the shell prompt on the same line.
    leases = await wait_for_matches(
        spec.paths.serial_log, rf"{LEASE_MARKER} (\S+) (\S+) (\S+)", timeout=LEASE_TIMEOUT
    )
    assert leases[0].group(2, 3) == (mac, "10.0.2.15")

    console = await SerialConsole.open(spec.paths.console_socket)
    try:
        # The cdrom is an sr device next to the sd disk.
        assert (await console.run("ls /sys/block")).split() == ["sda", "sr0"]
        before = (await monitor.query_blockstats())["ide:0:0"]
        assert before.read_bytes > 0 and before.read_requests > 0
        await console.run("cat /dev/sda > /dev/null")
        await console.run("echo x > /dev/sda; sync")
    finally:
        await console.close()
    after = await monitor.query_blockstats()
    assert set(after) == {"ide:0:0", "ide:1:0"}
    assert after["ide:0:0"].read_bytes >= before.read_bytes + 25 * 1024 * 1024 - 1024 * 1024
    assert after["ide:0:0"].write_requests > before.write_requests

    await monitor.quit()
    shutdown = await monitor.wait_for_event("SHUTDOWN", timeout=10)
    assert (shutdown.data["guest"], shutdown.reason) == (False, "host-qmp-quit")
    assert await process.wait_exit(pid, timeout=10)
    assert await monitor.next_event(timeout=5) is None


async def test_virtio_scsi_guest_resets_is_readopted_and_powers_off(
    tiny_guest_image: Path, workdir: Path, launch: Launch
) -> None:
    spec = spec_for(
        workdir,
        DiskSpec("scsi:0:2", copy_disk(tiny_guest_image, workdir / "disk.raw")),
        boot="scsi:0:2",
    )
    pid, monitor = await launch(spec)
    await wait_for_log(spec.paths.serial_log, READY_MARKER, timeout=BOOT_TIMEOUT)

    await monitor.system_reset()
    assert (await monitor.wait_for_event("RESET", timeout=10)).reason == "host-qmp-system-reset"
    await wait_for_log(spec.paths.serial_log, BOOT_MARKER, count=2, timeout=BOOT_TIMEOUT)

    # As after a daemon restart: find the VM from its pidfile and talk to it afresh.
    await monitor.close()
    assert process.adopt(spec.run_dir, spec.uuid) == pid
    assert process.adopt(spec.run_dir, str(uuid.uuid4())) is None
    async with Monitor(spec.paths.qmp_socket) as fresh:
        assert await fresh.query_status() == "running"
        await wait_for_log(spec.paths.serial_log, READY_MARKER, count=2, timeout=BOOT_TIMEOUT)
        await fresh.system_powerdown()
        shutdown = await fresh.wait_for_event("SHUTDOWN", timeout=30)
        assert (shutdown.data["guest"], shutdown.reason) == (True, "guest-shutdown")
        # `-action shutdown=pause`: QEMU waits, paused, for the driver to read it and end it.
        assert await fresh.query_status() == "shutdown"
        assert process.adopt(spec.run_dir, spec.uuid) == pid
        await fresh.quit()
    assert await process.wait_exit(pid, timeout=10)
    assert POWEROFF_MARKER in read_serial_log(spec.paths.serial_log)
    assert process.adopt(spec.run_dir, spec.uuid) is None


def make_luks_image(source: Path, target: Path, secret: Path) -> None:
    argv = [
        "qemu-img",
        "convert",
        "-O",
        "luks",
        "--object",
        f"secret,id=sec0,file={secret}",
        "-o",
        "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,"
        "hash-alg=sha256,iter-time=100",
        str(source),
        str(target),
    ]
    # qemu-img times its PBKDF2 with per-thread CPU time, which here sometimes reads 0 ms
    # ("Unable to get accurate CPU usage"): a retry is the only cure.
    for _ in range(10):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        assert "Unable to get accurate CPU usage" in done.stderr, done.stderr
        target.unlink(missing_ok=True)
    pytest.fail(f"qemu-img could not create a LUKS image: {done.stderr}")


async def test_luks_encrypted_drive_boots_from_virtio_blk_and_vm_is_killed(
    tiny_guest_image: Path, workdir: Path, launch: Launch
) -> None:
    secret = workdir / "drive.key"
    secret.write_text(PASSPHRASE)
    secret.chmod(0o600)
    encrypted = workdir / "disk.luks"
    await asyncio.to_thread(make_luks_image, tiny_guest_image, encrypted, secret)
    spec = spec_for(
        workdir,
        DiskSpec("block:3", encrypted, format="luks", secret_file=secret),
        boot="block:3",
    )
    pid, monitor = await launch(spec)
    await wait_for_log(spec.paths.serial_log, BOOT_MARKER, timeout=BOOT_TIMEOUT)
    assert (await monitor.query_blockstats())["block:3"].read_bytes > 0
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert PASSPHRASE.encode() not in cmdline
    assert PASSPHRASE not in spec.paths.argv_file.read_text()

    await process.kill(pid, spec.uuid, timeout=10)
    assert process.adopt(spec.run_dir, spec.uuid) is None
    shutdown = await monitor.wait_for_event("SHUTDOWN", timeout=5)
    assert shutdown.reason == "host-signal"


async def test_spawn_reports_why_qemu_refused_to_start(workdir: Path) -> None:
    spec = spec_for(workdir, DiskSpec("ide:0:0", workdir / "missing.raw"), boot="ide:0:0")
    with pytest.raises(HypervisorError, match=r"QEMU failed to start: .*missing\.raw"):
        await process.spawn(spec)
    assert process.adopt(spec.run_dir, spec.uuid) is None


async def test_a_second_spawn_of_a_running_server_is_refused(
    tiny_guest_image: Path, workdir: Path, launch: Launch
) -> None:
    spec = spec_for(
        workdir,
        DiskSpec("ide:0:0", copy_disk(tiny_guest_image, workdir / "disk.raw")),
        boot="ide:0:0",
    )
    pid, _ = await launch(spec)
    with pytest.raises(HypervisorError, match=f"already has a running VM \\(pid {pid}\\)"):
        await process.spawn(spec)
