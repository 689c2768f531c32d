"""One behaviour suite for every hypervisor driver (after Nova's `test_virt_drivers.py`):
the rules of `HypervisorDriver` (hypervisor/driver.py), run against the in-memory fake and,
in the integration run, against real QEMU (TCG); and the same over the wire: a
`RemoteHypervisorDriver` calling a real `openhosting-agent` on loopback (mutual TLS) that
runs the fake (`remote-fake`) or, for the core lifecycle cases (`core_harness`), QEMU
(`remote-qemu`, integration). One agent per kind and module; each test ends what it started.

The QEMU VMs are diskless (SeaBIOS looking for a boot device: they start in well under a
second and answer their monitor) but for the guest's power-off, which needs a guest: the tiny
guest, booted once. One VM at a time; each test ends whatever it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from openhosting.agent.pki import control_context
from openhosting.config import HypervisorSettings
from openhosting.hypervisor import process
from openhosting.hypervisor.driver import (
    HypervisorDriver,
    IncomingInfo,
    IncomingRequest,
    MigratingDriver,
    StartRequest,
    VmEnd,
    VmEvent,
    VmEventKind,
    VmState,
    VmStatus,
)
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.fake import FakeHost, FakeHypervisor
from openhosting.hypervisor.migration import live_migrate
from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from openhosting.hypervisor.spec import DiskSpec, DriveSecret, VmSpec
from testbed.agent_process import agent_process, make_cluster
from testbed.build_guest import READY_MARKER, build_tiny_guest

EVENT_TIMEOUT = 20.0
BOOT_TIMEOUT = 60.0


class Harness:
    """A driver of one kind, the events it sent, and the faults of its kind."""

    def __init__(self, kind: str, workdir: Path, agent: Agent | None = None) -> None:
        self.kind = kind
        self.workdir = workdir
        self.agent = agent
        self.fake_host = FakeHost()
        self.events: list[VmEvent] = []
        self.drivers: list[HypervisorDriver] = []
        self.driver: HypervisorDriver = FakeHypervisor()  # replaced by `open`

    async def open(self) -> Harness:
        self.driver = await self.new_driver()
        return self

    async def new_driver(self) -> HypervisorDriver:
        """A driver as a restarted daemon makes it: same host, nothing held."""
        driver: HypervisorDriver
        if self.kind == "fake":
            driver = FakeHypervisor(self.workdir / "run", self.fake_host)
        elif self.kind == "qemu":
            settings = HypervisorSettings(accelerator="tcg", run_as="", stop_timeout=5)
            driver = QemuDriver(settings, self.workdir / "run", self.workdir / "state")
        else:
            assert self.agent is not None
            remote = RemoteHypervisorDriver("hv-a", self.agent.address, self.agent.context)
            await remote.connect()
            driver = remote
        driver.listen(self.record)
        self.drivers.append(driver)
        return driver

    def other_host(self) -> MigratingDriver:
        """A driver of a second host (its own fake host, its own run directory)."""
        driver: MigratingDriver
        if self.kind == "fake":
            driver = FakeHypervisor(self.workdir / "run-b", FakeHost())
        else:
            settings = HypervisorSettings(accelerator="tcg", run_as="", stop_timeout=5)
            driver = QemuDriver(settings, self.workdir / "run-b", self.workdir / "state-b")
        driver.listen(self.record)
        self.drivers.append(driver)
        return driver

    async def record(self, event: VmEvent) -> None:
        self.events.append(event)

    def spec(self, *disks: DiskSpec, boot: tuple[str, ...] = (), mem_mb: int = 64) -> VmSpec:
        server = str(uuid.uuid4())
        host = self.driver.host_settings(vnc_listen="127.0.0.1", netns=None)
        return VmSpec(
            uuid=server, smp=1, mem_mb=mem_mb, run_dir=self.driver.run_dir(server),
            accelerator=host.accelerator, qemu_binary=host.qemu_binary, disks=disks, boot=boot,
        )  # fmt: skip

    def kinds(self, server: str) -> list[VmEventKind]:
        return [event.kind for event in self.events if event.server == server]

    async def wait_for(self, server: str, kind: VmEventKind) -> VmEvent:
        for _ in range(int(EVENT_TIMEOUT / 0.05)):
            for event in self.events:
                if event.server == server and event.kind == kind:
                    return event
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event for {server}: {self.events}")

    async def failing_spec(self) -> VmSpec:
        """The spec of a start that will fail."""
        if isinstance(self.driver, FakeHypervisor):
            self.driver.fail_next_start()
        elif self.kind == "remote-fake":
            await self._fault("fail_next_start")
        else:  # QEMU refuses a drive file that does not exist.
            return self.spec(DiskSpec("ide:0:0", self.workdir / "missing.raw"))
        return self.spec()

    async def crash(self, server: str) -> None:
        """The VM vanishes without a word (killed from outside, died)."""
        if isinstance(self.driver, FakeHypervisor):
            await self.driver.crash(server)
            return
        if self.kind == "remote-fake":
            await self._fault("crash", server=server)
            return
        pid = process.adopt(self.driver.run_dir(server), server)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    async def pause(self, server: str) -> None:
        """The hypervisor stops the vCPUs (as an operator's monitor or a full disk does)."""
        if isinstance(self.driver, FakeHypervisor):
            await self.driver.pause(server)
            return
        if self.kind == "remote-fake":
            await self._fault("pause", server=server)
            return
        assert isinstance(self.driver, QemuDriver)
        await self.driver.vm(server).monitor.execute("stop")

    async def print_serial(self, server: str, text: str) -> None:
        """What the guest prints on its serial port (the fakes')."""
        if isinstance(self.driver, FakeHypervisor):
            self.driver.print_serial(server, text.encode())
        else:
            await self._fault("print_serial", server=server, text=text)

    async def take_port(self, address: str, port: int) -> None:
        """Something else on the VM's host listens on `address`:`port` (the fakes')."""
        if isinstance(self.driver, FakeHypervisor):
            self.driver.host.ports_in_use.add((address, port))
        else:
            await self._fault("take_port", address=address, port=port)

    async def _fault(self, name: str, **body: str | int) -> None:
        """Inject a fault into the fake behind the agent (its test-only route)."""
        assert self.agent is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://{self.agent.address}/faults/{name}", json=body,
                ssl=self.agent.context, server_hostname="hv-a",
            ) as response,
        ):  # fmt: skip
            assert response.status == 200, await response.text()

    async def close(self) -> None:
        for driver in self.drivers:
            for server in driver.held():
                await driver.kill(server)
            for server in await driver.unheld():
                await driver.stop_unheld(server)
            await driver.detach_all()
            if isinstance(driver, RemoteHypervisorDriver):
                await driver.close()


@dataclass(frozen=True)
class Agent:
    """A real agent on loopback and the control plane's TLS to reach it."""

    address: str
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def agents() -> Iterator[Callable[[str], Agent]]:
    """The module's agents, one per driver kind, started on first use."""
    started: dict[str, Agent] = {}
    with contextlib.ExitStack() as stack:
        # Short: the QEMU agent's unix socket paths must stay under 108 bytes.
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oh-agt-")))
        cluster = make_cluster(workdir)

        def agent(driver: str) -> Agent:
            if driver not in started:
                process = stack.enter_context(
                    agent_process(workdir / driver, cluster.host("hv-a"), driver=driver)
                )
                started[driver] = Agent(process.address, control_context(cluster.control))
            return started[driver]

        yield agent


async def _harness(kind: str, agents: Callable[[str], Agent]) -> AsyncIterator[Harness]:
    agent = agents(kind.removeprefix("remote-")) if kind.startswith("remote-") else None
    # Short and removed afterwards: unix socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="oh-drv-") as name:
        made = Harness(kind, Path(name), agent)
        try:
            yield await made.open()
        finally:
            await made.close()


@pytest.fixture(
    params=["fake", pytest.param("qemu", marks=pytest.mark.integration), "remote-fake"],
)
async def harness(
    request: pytest.FixtureRequest, agents: Callable[[str], Agent]
) -> AsyncIterator[Harness]:
    async for made in _harness(request.param, agents):
        yield made


@pytest.fixture(params=["fake", pytest.param("qemu", marks=pytest.mark.integration)])
async def migration_harness(
    request: pytest.FixtureRequest, agents: Callable[[str], Agent]
) -> AsyncIterator[Harness]:
    """The drivers that move VMs (`MigratingDriver`) within one process; the remote driver
    moves them between two agents in tests/integration/test_live_migration.py."""
    async for made in _harness(request.param, agents):
        yield made


@pytest.fixture
async def remote_fake_harness(agents: Callable[[str], Agent]) -> AsyncIterator[Harness]:
    """The remote driver of an agent running the fake: what crosses the agent's wire."""
    async for made in _harness("remote-fake", agents):
        yield made


@pytest.fixture(
    params=[
        "fake",
        pytest.param("qemu", marks=pytest.mark.integration),
        "remote-fake",
        pytest.param("remote-qemu", marks=pytest.mark.integration),
    ],
)
async def core_harness(
    request: pytest.FixtureRequest, agents: Callable[[str], Agent]
) -> AsyncIterator[Harness]:
    """The core lifecycle cases also run over the wire against QEMU."""
    async for made in _harness(request.param, agents):
        yield made


async def test_a_started_vm_runs_until_stopped_and_its_exit_is_the_last_event(
    core_harness: Harness,
) -> None:
    harness = core_harness
    driver = harness.driver
    spec = harness.spec()
    status = await driver.start(StartRequest(spec))
    assert (status.server, status.state, status.reason) == (spec.uuid, VmState.RUNNING, None)
    assert status.started > 0
    assert driver.status(spec.uuid) == status
    assert driver.held() == [spec.uuid]
    assert await driver.unheld() == []
    with pytest.raises(HypervisorError):
        await driver.start(StartRequest(spec))  # one VM per server

    await driver.stop(spec.uuid)
    # Stopped once `stop` returns: its exit told, and nothing after it.
    assert harness.kinds(spec.uuid) == [VmEventKind.EXITED]
    assert harness.events[-1].how == VmEnd.SHUTDOWN
    assert driver.status(spec.uuid) is None and driver.held() == []
    with pytest.raises(HypervisorError):
        await driver.stop(spec.uuid)


async def test_a_killed_vm_is_gone_and_told(core_harness: Harness) -> None:
    harness = core_harness
    spec = harness.spec()
    await harness.driver.start(StartRequest(spec))
    await harness.driver.kill(spec.uuid)
    assert harness.kinds(spec.uuid) == [VmEventKind.EXITED]
    assert harness.driver.status(spec.uuid) is None


async def test_a_crash_is_an_exit_event_saying_so(core_harness: Harness) -> None:
    harness = core_harness
    spec = harness.spec()
    await harness.driver.start(StartRequest(spec))
    await harness.crash(spec.uuid)
    exited = await harness.wait_for(spec.uuid, VmEventKind.EXITED)
    assert exited.how == VmEnd.CRASH
    assert harness.kinds(spec.uuid) == [VmEventKind.EXITED]
    assert harness.driver.status(spec.uuid) is None and harness.driver.held() == []


async def test_a_start_that_fails_leaves_nothing_and_tells_nothing(core_harness: Harness) -> None:
    harness = core_harness
    driver = harness.driver
    spec = await harness.failing_spec()
    with pytest.raises(HypervisorError):
        await driver.start(StartRequest(spec))
    await asyncio.sleep(0.1)  # an exit would be told by now
    assert harness.events == []
    assert driver.status(spec.uuid) is None and driver.held() == []
    assert await driver.unheld() == []
    # Nothing is in the way of the next start.
    assert (await driver.start(StartRequest(harness.spec()))).state == VmState.RUNNING


async def test_a_vm_the_hypervisor_pauses_shows_paused_until_resumed(harness: Harness) -> None:
    driver = harness.driver
    spec = harness.spec()
    await driver.start(StartRequest(spec))
    await harness.pause(spec.uuid)
    paused = await harness.wait_for(spec.uuid, VmEventKind.PAUSED)
    assert paused.reason == "paused"  # QEMU's run state after a monitor's `stop`
    status = driver.status(spec.uuid)
    assert status is not None and (status.state, status.reason) == (VmState.PAUSED, "paused")

    await driver.resume(spec.uuid)
    await harness.wait_for(spec.uuid, VmEventKind.RESUMED)
    status = driver.status(spec.uuid)
    assert status is not None and (status.state, status.reason) == (VmState.RUNNING, None)
    assert harness.kinds(spec.uuid) == [VmEventKind.PAUSED, VmEventKind.RESUMED]


async def test_a_new_driver_adopts_the_vms_the_last_one_left_running(core_harness: Harness) -> None:
    harness = core_harness
    first = harness.driver
    spec = harness.spec()
    await first.start(StartRequest(spec))
    await first.detach_all()  # the daemon stops; its VMs run on
    assert first.held() == [] and first.status(spec.uuid) is None

    restarted = await harness.new_driver()
    assert await restarted.unheld() == [spec.uuid]
    status = await restarted.adopt(spec.uuid, started=1234.0)
    assert status is not None and (status.state, status.started) == (VmState.RUNNING, 1234.0)
    assert restarted.held() == [spec.uuid] and await restarted.unheld() == []
    assert await restarted.adopt(str(uuid.uuid4()), started=0) is None

    # Its exit is the new driver's to tell; a VM that is gone ended cleanly.
    await restarted.stop(spec.uuid)
    assert harness.kinds(spec.uuid) == [VmEventKind.EXITED]
    assert await (await harness.new_driver()).adopt(spec.uuid, started=0) is None
    assert restarted.how_ended(spec.uuid) == VmEnd.SHUTDOWN


async def test_a_vm_nobody_holds_is_stopped_without_an_event(core_harness: Harness) -> None:
    harness = core_harness
    spec = harness.spec()
    await harness.driver.start(StartRequest(spec))
    await harness.driver.detach_all()
    other = await harness.new_driver()
    await other.stop_unheld(spec.uuid)
    assert await other.unheld() == [] and await other.adopt(spec.uuid, started=0) is None
    assert harness.events == []


async def test_a_guest_power_off_gives_a_last_look_then_ends_the_vm(harness: Harness) -> None:
    driver = harness.driver
    if isinstance(driver, FakeHypervisor):
        spec = harness.spec()
    else:
        disk = harness.workdir / "guest.raw"
        disk.write_bytes(build_tiny_guest().read_bytes())
        spec = harness.spec(DiskSpec("ide:0:0", disk), boot=("ide:0:0",), mem_mb=128)
    looked: list[list[str]] = []

    async def last_look(event: VmEvent) -> None:
        await harness.record(event)
        if event.kind == VmEventKind.POWERED_OFF:  # the VM is still there to be read
            looked.append(sorted(await driver.blockstats(event.server)))

    driver.listen(last_look)
    await driver.start(StartRequest(spec))
    if isinstance(driver, QemuDriver):
        for _ in range(int(BOOT_TIMEOUT / 0.2)):
            if READY_MARKER.encode() in (driver.serial_log(spec.uuid) or b""):
                break
            await asyncio.sleep(0.2)
        else:
            log = (driver.serial_log(spec.uuid) or b"")[-800:]
            raise AssertionError(f"the guest did not boot: {log!r}")
    await driver.powerdown(spec.uuid)
    exited = await harness.wait_for(spec.uuid, VmEventKind.EXITED)
    assert exited.how == VmEnd.SHUTDOWN
    assert harness.kinds(spec.uuid) == [VmEventKind.POWERED_OFF, VmEventKind.EXITED]
    assert looked == [[disk.slot for disk in spec.disks]]
    assert driver.status(spec.uuid) is None


@pytest.fixture(params=["fake", "remote-fake"])
async def fake_harness(
    request: pytest.FixtureRequest, agents: Callable[[str], Agent]
) -> AsyncIterator[Harness]:
    """The fake in-process and behind a real agent: faults injected into either."""
    async for made in _harness(request.param, agents):
        yield made


async def test_a_vms_serial_log_and_vnc_ports_are_its_hosts_even_over_the_wire(
    fake_harness: Harness,
) -> None:
    driver = fake_harness.driver
    spec = fake_harness.spec()
    await driver.start(StartRequest(spec))
    await fake_harness.print_serial(spec.uuid, "booted\n")
    await fake_harness.take_port("127.0.0.1", 5907)
    # From a worker thread, as the services ask (an agent is asked over the wire).
    assert await asyncio.to_thread(driver.serial_log, spec.uuid) == b"booted\n"
    assert not await asyncio.to_thread(driver.vnc_port_free, "127.0.0.1", 5907)
    assert await asyncio.to_thread(driver.vnc_port_free, "127.0.0.1", 5908)
    if fake_harness.kind == "remote-fake":  # on the event loop it would stall the loop
        with pytest.raises(HypervisorError, match="worker thread"):
            driver.serial_log(spec.uuid)
    await driver.stop(spec.uuid)


def test_specs_cross_the_interface_as_plain_data() -> None:
    """What goes in and out is plain data: a spec survives being taken apart and rebuilt."""
    spec = VmSpec(
        str(uuid.uuid4()), 1, 64, Path("/run/x"), disks=(DiskSpec("ide:0:0", Path("/d")),)
    )
    fields = dataclasses.asdict(spec)
    assert VmSpec(**{**fields, "disks": tuple(DiskSpec(**d) for d in fields["disks"])}) == spec


async def test_a_saved_vm_stays_paused_and_a_start_from_its_state_runs_it_on(
    harness: Harness,
) -> None:
    driver = harness.driver
    spec = harness.spec()
    await driver.start(StartRequest(spec))
    saved = bytearray()

    def sink(fd: int) -> None:
        while chunk := os.read(fd, 1 << 16):
            saved.extend(chunk)

    def source(fd: int) -> None:
        view = memoryview(bytes(saved))
        while view:
            view = view[os.write(fd, view) :]

    await driver.save_state(spec.uuid, sink, timeout=EVENT_TIMEOUT)
    status = driver.status(spec.uuid)
    assert saved and status is not None and status.state == VmState.PAUSED
    await driver.stop(spec.uuid)

    restored = dataclasses.replace(spec, incoming=True)
    status = await driver.start(StartRequest(restored, timeout=EVENT_TIMEOUT), restore=source)
    assert status.state == VmState.RUNNING


async def test_a_vm_whose_state_cannot_be_saved_runs_on(harness: Harness) -> None:
    driver = harness.driver
    spec = harness.spec()
    await driver.start(StartRequest(spec))

    def failing_sink(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(HypervisorError):
        await driver.save_state(spec.uuid, failing_sink, timeout=EVENT_TIMEOUT)
    for _ in range(int(EVENT_TIMEOUT / 0.05)):  # QEMU tells its resume by an event
        status = driver.status(spec.uuid)
        if status is not None and status.state == VmState.RUNNING:
            break
        await asyncio.sleep(0.05)
    status = driver.status(spec.uuid)
    assert status is not None and (status.state, status.reason) == (VmState.RUNNING, None)


DRIVE_BYTES = 1 << 20


def _with_drive(harness: Harness) -> VmSpec:
    """A VM with a small drive of known bytes (no guest: SeaBIOS finds nothing to boot)."""
    drive = harness.workdir / "a.raw"
    drive.write_bytes(bytes(range(256)) * (DRIVE_BYTES // 256))
    return harness.spec(DiskSpec("ide:0:0", drive))


def _incoming_on(target: MigratingDriver, spec: VmSpec, started: float = 0.0) -> IncomingRequest:
    """`spec` moved to `target`, its drive to `b.raw` beside the source's."""
    disks = tuple(dataclasses.replace(d, path=d.path.with_name("b.raw")) for d in spec.disks)
    moved = dataclasses.replace(spec, run_dir=target.run_dir(spec.uuid), disks=disks, incoming=True)
    sizes = tuple((disk.slot, DRIVE_BYTES) for disk in spec.disks)
    start = StartRequest(moved, timeout=EVENT_TIMEOUT)
    return IncomingRequest(start, drive_bytes=sizes, started=started)


async def _running_with_a_target(
    harness: Harness,
) -> tuple[FakeHypervisor | QemuDriver, MigratingDriver, VmSpec, VmStatus, IncomingInfo]:
    """A VM with a drive running on the harness's driver (the source), and a target host
    prepared to receive it: (source, target, spec, the VM's status, the target's info)."""
    source = harness.driver
    assert isinstance(source, (FakeHypervisor, QemuDriver))
    target = harness.other_host()
    spec = _with_drive(harness)
    before = await source.start(StartRequest(spec))
    info = await target.prepare_incoming(_incoming_on(target, spec))
    return source, target, spec, before, info


async def _kill_incoming(target: MigratingDriver, server: str) -> None:
    """The target's VM dies before it runs."""
    if isinstance(target, FakeHypervisor):
        await target.crash(server)
        return
    pid = process.adopt(target.run_dir(server), server)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_an_encrypted_drives_header_and_passphrase_reach_a_target_agent(
    remote_fake_harness: Harness,
) -> None:
    # A LUKS1 header with one key slot's material is ~260 kB, ~350 kB as base64 in the
    # call's first line; the fake behind the agent refuses an encrypted drive without it.
    harness = remote_fake_harness
    target = harness.driver
    assert isinstance(target, RemoteHypervisorDriver)
    spec = harness.spec()
    secret = DriveSecret(spec.run_dir / "secret-ide-0-0", b"p" * 44)
    disk = DiskSpec("ide:0:0", Path("/d/b.img"), format="luks", secret_file=secret.path)
    spec = dataclasses.replace(spec, disks=(disk,), incoming=True)
    header = b"LUKS\xba\xbe" + os.urandom(260_000)
    request = IncomingRequest(
        StartRequest(spec, secrets=(secret,), timeout=EVENT_TIMEOUT),
        drive_bytes=(("ide:0:0", 4 << 20),),
        drive_headers=(("ide:0:0", header),),
    )

    info = await target.prepare_incoming(request)

    assert info.server == spec.uuid and dict(info.drive_paths) == {"ide:0:0": "/d/b.img"}
    await target.abort_incoming(spec.uuid)


async def test_a_migrated_vm_runs_on_the_target_and_no_longer_on_the_source(
    migration_harness: Harness,
) -> None:
    harness = migration_harness
    source = harness.driver
    assert isinstance(source, (FakeHypervisor, QemuDriver))
    target = harness.other_host()
    spec = _with_drive(harness)
    before = await source.start(StartRequest(spec))
    request = _incoming_on(target, spec, started=before.started)

    status = await live_migrate(source, target, request, EVENT_TIMEOUT)

    assert (status.server, status.state, status.started) == (
        spec.uuid,
        VmState.RUNNING,
        before.started,
    )
    assert target.held() == [spec.uuid] and target.status(spec.uuid) == status
    assert source.held() == [] and source.status(spec.uuid) is None
    assert await source.unheld() == []
    # It moved: it neither ended nor paused for whoever listens.
    assert harness.kinds(spec.uuid) == []
    if harness.kind == "qemu":  # its drive with it
        await target.stop(spec.uuid)
        assert (harness.workdir / "b.raw").read_bytes() == spec.disks[0].path.read_bytes()


async def test_a_migration_whose_target_dies_leaves_the_vm_running_where_it_was(
    migration_harness: Harness,
) -> None:
    harness = migration_harness
    source, target, spec, before, info = await _running_with_a_target(harness)
    await _kill_incoming(target, spec.uuid)

    with pytest.raises(HypervisorError):
        await source.migrate_out(spec.uuid, info, EVENT_TIMEOUT)
    await target.abort_incoming(spec.uuid)

    assert source.held() == [spec.uuid] and source.status(spec.uuid) == before
    assert target.held() == [] and await target.unheld() == []
    assert not (harness.workdir / "b.raw").exists()
    assert harness.kinds(spec.uuid) == []


async def test_a_vm_whose_target_dies_after_its_state_moved_runs_on_at_the_source(
    migration_harness: Harness,
) -> None:
    harness = migration_harness
    source, target, spec, before, info = await _running_with_a_target(harness)
    await source.migrate_out(spec.uuid, info, EVENT_TIMEOUT)
    await _kill_incoming(target, spec.uuid)

    with pytest.raises(HypervisorError):
        await target.finish_incoming(spec.uuid, EVENT_TIMEOUT)
    await target.abort_incoming(spec.uuid)
    await source.cancel_migrate_out(spec.uuid)

    assert source.held() == [spec.uuid] and source.status(spec.uuid) == before
    if harness.kind == "qemu":  # QEMU's own word: out of `postmigrate`, its drives back
        assert await source.vm(spec.uuid).monitor.query_status() == "running"
    assert target.held() == [] and not (harness.workdir / "b.raw").exists()
    assert harness.kinds(spec.uuid) == []
