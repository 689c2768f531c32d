"""`live_migrate`'s order of the drivers' calls and its undo, on fake hosts (the QMP sequence
itself is tested against QEMU: test_driver_behaviour.py, test_migration_tls.py and
tests/integration/test_live_migration.py)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from openhosting.config import ConfigError, HypervisorSettings
from openhosting.hypervisor.driver import IncomingRequest, StartRequest, VmState, VmStatus
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.fake import FakeHost, FakeHypervisor
from openhosting.hypervisor.migration import live_migrate
from openhosting.hypervisor.monitor import (
    UNLIMITED_BANDWIDTH,
    bandwidth_parameters,
    mirror_arguments,
)
from openhosting.hypervisor.qemu_driver import migration_bandwidth, migration_ports
from openhosting.hypervisor.spec import VmSpec

calls: list[str] = []


class Source(FakeHypervisor):
    async def cancel_migrate_out(self, server: str) -> None:
        calls.append("source runs again")
        await super().cancel_migrate_out(server)

    async def end_migrated(self, server: str, timeout: float = 10.0) -> None:
        await super().end_migrated(server, timeout)
        raise HypervisorError("quit got no answer")


class Target(FakeHypervisor):
    fail_finish = False

    async def finish_incoming(self, server: str, timeout: float) -> VmStatus:
        if self.fail_finish:
            raise HypervisorError("cont failed")
        return await super().finish_incoming(server, timeout)

    async def abort_incoming(self, server: str) -> None:
        calls.append("target ends")
        await super().abort_incoming(server)


def spec_on(driver: FakeHypervisor) -> VmSpec:
    server = str(uuid.uuid4())
    return VmSpec(uuid=server, smp=1, mem_mb=64, run_dir=driver.run_dir(server))


def moved(spec: VmSpec, target: FakeHypervisor) -> IncomingRequest:
    incoming = dataclasses.replace(spec, run_dir=target.run_dir(spec.uuid), incoming=True)
    return IncomingRequest(StartRequest(incoming), drive_bytes=())


async def test_a_target_that_cannot_run_the_vm_ends_before_the_source_runs_it_again() -> None:
    calls.clear()
    source, target = Source(Path("/a"), FakeHost()), Target(Path("/b"), FakeHost())
    target.fail_finish = True
    spec = spec_on(source)
    before = await source.start(StartRequest(spec))

    with pytest.raises(HypervisorError, match="cont failed"):
        await live_migrate(source, target, moved(spec, target), 5.0)

    # Never both at once: the target's VM is gone first.
    assert calls[:2] == ["target ends", "source runs again"]
    assert source.status(spec.uuid) == before and target.held() == []
    assert await target.unheld() == []


async def test_a_source_that_does_not_end_cleanly_does_not_undo_a_done_migration() -> None:
    source, target = Source(Path("/a"), FakeHost()), Target(Path("/b"), FakeHost())
    spec = spec_on(source)
    await source.start(StartRequest(spec))

    status = await live_migrate(source, target, moved(spec, target), 5.0)

    assert status.state == VmState.RUNNING and target.held() == [spec.uuid]
    assert source.held() == []


@pytest.mark.parametrize(
    ("ports", "expected"),
    [("49152-49215", range(49152, 49216)), ("7000", range(7000, 7001)), ("1-65535", None)],
)
def test_the_migration_ports_are_a_range_of_tcp_ports(ports: str, expected: range | None) -> None:
    settings = HypervisorSettings(migration_ports=ports)
    assert migration_ports(settings) == (expected or range(1, 65536))


@pytest.mark.parametrize("ports", ["", "0-10", "5-4", "60000-70000", "a-b", "1-2-3"])
def test_a_range_that_is_no_tcp_ports_stops_the_driver(ports: str) -> None:
    with pytest.raises(ConfigError, match="migration_ports"):
        migration_ports(HypervisorSettings(migration_ports=ports))


@pytest.mark.parametrize("address", ["10.0.0.1,x=y", "::1", "a b", "exec:true"])
def test_a_migration_address_that_is_no_host_stops_the_driver(address: str) -> None:
    with pytest.raises(ConfigError, match="migration_address"):
        migration_ports(HypervisorSettings(migration_address=address))


def test_the_migration_bandwidth_limit_is_mib_per_second_and_0_none() -> None:
    assert migration_bandwidth(HypervisorSettings()) == 0
    assert migration_bandwidth(HypervisorSettings(migration_max_bandwidth=100)) == 100 << 20
    with pytest.raises(ConfigError, match="migration_max_bandwidth"):
        migration_bandwidth(HypervisorSettings(migration_max_bandwidth=-1))


def test_the_limit_goes_to_the_state_s_stream_and_the_drives_copy() -> None:
    # QEMU's own default (128 MiB/s) is never left in place: no limit is no limit.
    assert bandwidth_parameters(0) == {"max-bandwidth": UNLIMITED_BANDWIDTH}
    assert bandwidth_parameters(100 << 20) == {"max-bandwidth": 100 << 20}
    unlimited = mirror_arguments("migrate-d0", "d0", "migrate-d0")
    assert unlimited == {
        "job-id": "migrate-d0",
        "device": "d0",
        "target": "migrate-d0",
        "sync": "full",
        "copy-mode": "write-blocking",
    }
    assert mirror_arguments("migrate-d0", "d0", "migrate-d0", 100 << 20) == {
        **unlimited,
        "speed": 100 << 20,
    }
