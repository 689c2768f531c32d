"""Live migration over TLS between two QEMU drivers of this machine (two hosts of a cluster):
both streams use the hosts' cluster certificates, and a target the source cannot trust (of
another CA, or not the host it claims to be) gets nothing: the VM runs on where it was.

Real QEMU under TCG; VMs without a guest (SeaBIOS finds nothing to boot) and a 1 MiB drive.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from openhosting.agent.pki import Bundle
from openhosting.config import HypervisorSettings
from openhosting.hypervisor.driver import IncomingRequest, StartRequest, VmEvent, VmState
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import MigrationTls, live_migrate, write_qemu_tls_dir
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from testbed.agent_process import make_cluster

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
DRIVE_BYTES = 1 << 20


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-mtls-") as name:
        yield Path(name)


class Hosts:
    """Drivers standing for hosts, each with its own run directory and TLS."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        self.workdir = workdir
        base = HypervisorSettings(accelerator="tcg", run_as="", stop_timeout=5)
        self.settings = dataclasses.replace(base, **settings)
        self.drivers: list[QemuDriver] = []
        self.events: list[VmEvent] = []

    def host(self, name: str, bundle: Bundle, *, claims: str | None = None) -> QemuDriver:
        """The driver of host `name` presenting `bundle`, saying it is `claims` (its name)."""
        tls_dir = self.workdir / f"tls-{name}"
        write_qemu_tls_dir(bundle.ca_cert, bundle.cert, bundle.key, tls_dir)
        driver = QemuDriver(
            self.settings,
            self.workdir / f"run-{name}",
            self.workdir / f"state-{name}",
            migration_tls=MigrationTls(tls_dir, claims or name),
        )
        driver.listen(self.record)
        self.drivers.append(driver)
        return driver

    async def record(self, event: VmEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        for driver in self.drivers:
            for server in driver.held():
                await driver.kill(server)
            for server in await driver.unheld():
                await driver.stop_unheld(server)
            await driver.detach_all()


@pytest.fixture
async def hosts(workdir: Path) -> AsyncIterator[Hosts]:
    made = Hosts(workdir)
    try:
        yield made
    finally:
        await made.close()


def vm_on(driver: QemuDriver, workdir: Path) -> VmSpec:
    drive = workdir / "a.raw"
    drive.write_bytes(bytes(range(256)) * (DRIVE_BYTES // 256))
    server = str(uuid.uuid4())
    return VmSpec(
        uuid=server, smp=1, mem_mb=64, run_dir=driver.run_dir(server), accelerator="tcg",
        disks=(DiskSpec("ide:0:0", drive),),
    )  # fmt: skip


def moved_to(target: QemuDriver, spec: VmSpec, drive: str = "b.raw") -> IncomingRequest:
    disk = dataclasses.replace(spec.disks[0], path=spec.disks[0].path.with_name(drive))
    moved = dataclasses.replace(
        spec, run_dir=target.run_dir(spec.uuid), disks=(disk,), incoming=True
    )
    return IncomingRequest(StartRequest(moved, timeout=TIMEOUT), ((disk.slot, DRIVE_BYTES),))


async def test_a_vm_moves_over_tls_between_hosts_of_one_cluster(
    hosts: Hosts, workdir: Path
) -> None:
    cluster = make_cluster(workdir)
    a, b = hosts.host("hv-a", cluster.host("hv-a")), hosts.host("hv-b", cluster.host("hv-b"))
    spec = vm_on(a, workdir)
    await a.start(StartRequest(spec))
    request = moved_to(b, spec)

    status = await live_migrate(a, b, request, TIMEOUT)

    assert (status.state, a.held(), b.held()) == (VmState.RUNNING, [], [spec.uuid])
    assert hosts.events == []
    # Nothing of the migration's TLS stays: a later save of its state (`fd:`) goes without.
    parameters = await b.vm(spec.uuid).monitor.execute("query-migrate-parameters")
    assert isinstance(parameters, dict) and parameters.get("tls-creds") == ""

    # And it can go on to another host (its target's TLS object gone, the source's free).
    back = moved_to(a, request.start.spec, "c.raw")
    status = await live_migrate(b, a, back, TIMEOUT)
    assert (status.state, a.held(), b.held()) == (VmState.RUNNING, [spec.uuid], [])
    assert hosts.events == []
    await a.stop(spec.uuid)
    assert back.start.spec.disks[0].path.read_bytes() == spec.disks[0].path.read_bytes()


@pytest.mark.parametrize(
    ("impostor", "refusal"),
    [("another CA", "known issuer"), ("another host's name", "does not match the hostname")],
)
async def test_a_target_the_source_cannot_trust_gets_nothing_and_the_vm_runs_on(
    hosts: Hosts, workdir: Path, impostor: str, refusal: str
) -> None:
    cluster = make_cluster(workdir)
    a = hosts.host("hv-a", cluster.host("hv-a"))
    if impostor == "another CA":
        other = make_cluster(workdir / "other")
        b = hosts.host("hv-b", other.host("hv-b"))
    else:  # a host of the cluster claiming to be another one
        b = hosts.host("hv-c", cluster.host("hv-c"), claims="hv-b")
    spec = vm_on(a, workdir)
    before = await a.start(StartRequest(spec))
    info = await b.prepare_incoming(moved_to(b, spec))
    # As the target would say it: the source checks the name against the certificate.
    assert info.tls_hostname == "hv-b"

    with pytest.raises(HypervisorError, match=refusal):
        await a.migrate_out(spec.uuid, info, TIMEOUT)
    await b.abort_incoming(spec.uuid)

    assert a.held() == [spec.uuid] and a.status(spec.uuid) == before
    assert await a.vm(spec.uuid).monitor.query_status() == "running"
    assert b.held() == [] and await b.unheld() == []
    assert not (workdir / "b.raw").exists()
    assert hosts.events == []


async def test_a_vm_moves_over_tls_when_qemu_runs_as_nobody(workdir: Path) -> None:
    """QEMU loads the migration TLS files after it dropped to `hypervisor.run_as`, which
    cannot read the host's key (root's, 0600): it gets a copy of its own for the load,
    which is gone once loaded. With a bandwidth limit, which QEMU takes."""
    if os.geteuid() != 0:
        pytest.skip("QEMU drops to another account only when started as root")
    workdir.chmod(0o711)  # QEMU as nobody reaches its run directory below
    hosts = Hosts(workdir, run_as="nobody", migration_max_bandwidth=512)
    try:
        cluster = make_cluster(workdir)
        a, b = hosts.host("hv-a", cluster.host("hv-a")), hosts.host("hv-b", cluster.host("hv-b"))
        spec = dataclasses.replace(vm_on(a, workdir), run_as="nobody")
        await a.start(StartRequest(spec))
        request = moved_to(b, spec)

        status = await live_migrate(a, b, request, TIMEOUT)

        assert (status.state, a.held(), b.held()) == (VmState.RUNNING, [], [spec.uuid])
        assert hosts.events == []
        assert [path.name for path in b.run_dir(spec.uuid).iterdir() if "tls" in path.name] == []
        await b.stop(spec.uuid)
        assert request.start.spec.disks[0].path.read_bytes() == spec.disks[0].path.read_bytes()
    finally:
        await hosts.close()
