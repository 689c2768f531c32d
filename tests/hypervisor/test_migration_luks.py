"""An encrypted (LUKS) drive moved by live migration between two QEMU drivers of this
machine: the target gets the passphrase as a start does (a file removed once QEMU read it)
and the header before its QEMU opens the container; what lands is the source's file byte for
byte, still encrypted, and the target's QEMU reads the plaintext it was written with.

Real QEMU under TCG; a VM without a guest (SeaBIOS finds nothing to boot), a 1 MiB payload.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.config import HypervisorSettings
from openhosting.hypervisor.driver import IncomingRequest, StartRequest, VmState
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import live_migrate
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.spec import DiskSpec, DriveSecret, VmSpec
from openhosting.services.servers.vm_specs import secret_path
from openhosting.storage.luks import LuksVolume, format_luks1, payload_offset

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
PAYLOAD_BYTES = 1 << 20
MARKER = b"written by the daemon before the move " * 100  # 3.8 KB, across sectors
QEMU_PATTERN = 0x5A  # written by the source's QEMU, at PATTERN_AT
PATTERN_AT = 512 << 10


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-mluks-") as name:
        yield Path(name)


@pytest.fixture
async def hosts(workdir: Path) -> AsyncIterator[tuple[QemuDriver, QemuDriver]]:
    settings = HypervisorSettings(accelerator="tcg", run_as="", stop_timeout=5)
    drivers = tuple(
        QemuDriver(settings, workdir / f"run-{name}", workdir / f"state-{name}")
        for name in ("a", "b")
    )
    try:
        yield drivers[0], drivers[1]
    finally:
        for driver in drivers:
            for server in driver.held():
                await driver.kill(server)
            for server in await driver.unheld():
                await driver.stop_unheld(server)
            await driver.detach_all()


async def write_pattern(driver: QemuDriver, server: str) -> None:
    """QEMU writes QEMU_PATTERN through the VM's device (qemu-io answers on QEMU's stdout,
    not the monitor: what it wrote is checked by what is read back)."""
    command = f'qemu-io -d ide-0-0 "write -P {QEMU_PATTERN} {PATTERN_AT} 64k"'
    await driver.vm(server).monitor.execute("human-monitor-command", {"command-line": command})


async def plaintext_of(driver: QemuDriver, server: str, into: Path) -> bytes:
    """The drive's plaintext as the VM's QEMU reads it (through its luks node), copied by a
    backup job into the plain file `into`."""
    monitor = driver.vm(server).monitor
    with into.open("wb") as file:
        file.truncate(PAYLOAD_BYTES)
    node = {"driver": "file", "node-name": "plain-copy", "filename": str(into)}
    await monitor.execute("blockdev-add", node)
    backup = {"job-id": "read", "device": "drive-ide-0-0", "target": "plain-copy"}
    await monitor.execute("blockdev-backup", {**backup, "sync": "full"})
    for _ in range(200):  # bounded: 10 s
        if "read" not in await monitor.query_block_jobs():
            break
        await asyncio.sleep(0.05)
    await monitor.execute("blockdev-del", {"node-name": "plain-copy"})
    return into.read_bytes()


async def test_an_encrypted_drive_moves_as_its_ciphertext_and_opens_on_the_target(
    hosts: tuple[QemuDriver, QemuDriver], workdir: Path
) -> None:
    a, b = hosts
    passphrase = base64.urlsafe_b64encode(secrets.token_bytes(32))
    source_file = workdir / "a.luks"
    format_luks1(source_file, passphrase, PAYLOAD_BYTES)
    volume = LuksVolume.open(source_file, passphrase)
    volume.write_at(4096, MARKER)
    volume.close()
    server = str(uuid.uuid4())

    def disk_in(run_dir: Path, path: Path) -> tuple[DiskSpec, DriveSecret]:
        secret = secret_path(run_dir, "ide:0:0")
        return DiskSpec("ide:0:0", path, format="luks", secret_file=secret), DriveSecret(
            secret, passphrase
        )

    disk, secret = disk_in(a.run_dir(server), source_file)
    spec = VmSpec(
        uuid=server, smp=1, mem_mb=64, run_dir=a.run_dir(server), accelerator="tcg",
        disks=(disk,),
    )  # fmt: skip
    await a.start(StartRequest(spec, secrets=(secret,), timeout=TIMEOUT))
    await write_pattern(a, server)
    target_file = workdir / "b.luks"
    landed, landed_secret = disk_in(b.run_dir(server), target_file)
    stored = source_file.read_bytes()
    header = stored[: payload_offset(source_file)].rstrip(b"\0")
    request = IncomingRequest(
        StartRequest(
            dataclasses.replace(spec, run_dir=b.run_dir(server), disks=(landed,), incoming=True),
            secrets=(landed_secret,),
            timeout=TIMEOUT,
        ),
        drive_bytes=(("ide:0:0", len(stored)),),
        drive_headers=(("ide:0:0", header),),
    )

    status = await live_migrate(a, b, request, TIMEOUT)

    assert (status.state, a.held(), b.held()) == (VmState.RUNNING, [], [server])
    assert not landed_secret.path.exists()  # QEMU read it as it started: it went
    # The source's ciphertext, header and key material as they were: encrypted at rest.
    assert target_file.read_bytes() == source_file.read_bytes()
    assert MARKER not in target_file.read_bytes()
    # The target's QEMU opened the container with the passphrase: the plaintext reads back.
    plain = await plaintext_of(b, server, workdir / "plain.raw")
    assert plain[4096 : 4096 + len(MARKER)] == MARKER
    assert plain[PATTERN_AT : PATTERN_AT + (64 << 10)] == bytes([QEMU_PATTERN]) * (64 << 10)


async def test_an_encrypted_drive_without_its_header_is_refused_by_the_target(
    hosts: tuple[QemuDriver, QemuDriver], workdir: Path
) -> None:
    _a, b = hosts
    server = str(uuid.uuid4())
    secret = secret_path(b.run_dir(server), "ide:0:0")
    disk = DiskSpec("ide:0:0", workdir / "b.luks", format="luks", secret_file=secret)
    spec = VmSpec(
        uuid=server, smp=1, mem_mb=64, run_dir=b.run_dir(server), accelerator="tcg",
        disks=(disk,), incoming=True,
    )  # fmt: skip
    request = IncomingRequest(
        StartRequest(spec, secrets=(DriveSecret(secret, b"x" * 32),)),
        drive_bytes=(("ide:0:0", 4 << 20),),
    )
    with pytest.raises(HypervisorError, match="only with its LUKS header"):
        await b.prepare_incoming(request)
    assert not disk.path.exists() and b.held() == []
