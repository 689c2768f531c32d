"""A server whose drives are on two hosts (services/drives/drive_exports.py): real SQLite and drive
files, two fake agents (hv-a, hv-b) that record the exports they are asked for (fast; the
same over real agents, qemu-storage-daemon and QEMU is tests/cluster/test_nbd_drives.py).

The server runs on its boot drive's host; its drive of the other host is exported from there
to it before its VM starts, the VM opening it over NBD; the export ends whenever the VM ends
(stop, crash), and with a start that fails. A drive whose host is down makes the start 503
naming it, with nothing left anywhere. Exports no running VM uses are ended when the agent is
found (a daemon's start). A drain refuses to leave such a drive behind, and does not move a
server using one."""

import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from openhosting.errors import BusyError, UnavailableError
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import EventHandler, ExportRequest, HypervisorDriver
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.hypervisor.spec import NbdSource
from openhosting.network.driver import NetworkDriver
from openhosting.services.operations import START
from openhosting.services.platform import Platform
from openhosting.storage.drive_storage import DriveStorage
from openhosting.store.tables import drives
from tests.services.fake_platform import REMOTE_CAPACITY, RecordingNetwork, fake_platform

SERVER = {"name": "s", "cpu": "500", "mem": "64", "persistent": "true"}
PORT = 49160


class AgentFiles:
    """The drives of an agent's host, as the services see them: not this host's storage
    (here: this host's files under another object, which is all a drive's `host` needs)."""

    def __init__(self, local: object) -> None:
        self._local = local

    def __getattr__(self, name: str) -> object:
        return getattr(self._local, name)


class ExportingFake(FakeHypervisor):
    """A fake agent's host that also exports its drives (`ExportingDriver`), in memory."""

    def __init__(self, run_path: Path, name: str) -> None:
        super().__init__(run_path)
        self.name = name
        self.exported: dict[str, set[str]] = {}  # server → drives
        self.requests: list[ExportRequest] = []
        self.fail_export = False

    async def export_drive(self, request: ExportRequest) -> NbdSource:
        if self.fail_export:
            raise HypervisorError(f"host {self.name}: cannot export (simulated)")
        self.requests.append(request)
        self.exported.setdefault(request.server, set()).add(request.drive)
        return NbdSource("10.0.0.12", PORT, request.drive, self.name)

    async def end_exports(self, server: str) -> None:
        self.exported.pop(server, None)

    async def exports(self) -> list[str]:
        return sorted(self.exported)


Hosts = tuple[Platform, ExportingFake, ExportingFake, str]


@pytest.fixture
def two_agents(tmp_path: Path) -> Iterator[Hosts]:
    """A platform with hosts hv-a and hv-b, each a fake exporting agent, and a user."""
    with fake_platform(tmp_path) as (platform, _local):
        agents = {name: ExportingFake(tmp_path / f"{name}-run", name) for name in ("hv-a", "hv-b")}

        async def connect(
            name: str, _address: str, handler: EventHandler
        ) -> tuple[HypervisorDriver, object, object, NetworkDriver]:
            agents[name].listen(handler)

            async def close() -> None:
                pass

            async def measure() -> HostCapacity:
                return REMOTE_CAPACITY

            return agents[name], close, measure, RecordingNetwork()

        platform.hosts.register()
        for name in agents:
            platform.hosts.set_agent(name, "127.0.0.1:7430")
        platform.hosts.heartbeat(dict.fromkeys(agents, REMOTE_CAPACITY))
        platform.servers.lifecycle.drivers.connector = connect  # type: ignore[assignment]
        storages = platform.drives.storages

        def agent_files(_host: str, _agent: str) -> DriveStorage:
            return typing.cast(DriveStorage, AgentFiles(storages.local))

        storages.connector = agent_files
        yield platform, agents["hv-a"], agents["hv-b"], platform.accounts.create_user().uuid


async def drive_on(platform: Platform, user: str, host: str, **more: str) -> str:
    created = await platform.drives.create(user, {"name": "d", "size": "1M", **more})
    drive = str(created["drive"])
    with platform.engine.begin() as connection:
        connection.execute(update(drives).where(drives.c.uuid == drive).values(host=host))
    return drive


async def two_host_server(platform: Platform, user: str) -> tuple[str, str]:
    """A stopped server booting from hv-a with its data drive (encrypted) on hv-b."""
    boot = await drive_on(platform, user, "hv-a")
    data = await drive_on(platform, user, "hv-b", **{"encryption:cipher": "aes-xts-plain"})
    config = {**SERVER, "ide:0:0": boot, "ide:0:1": data, "boot": "ide:0:0"}
    return str((await platform.servers.create(user, config, start=False))["server"]), data


async def test_the_drive_of_another_host_is_exported_to_the_vm_for_as_long_as_it_runs(
    two_agents: Hosts,
) -> None:
    platform, hv_a, hv_b, user = two_agents
    servers = platform.servers
    await servers.recover()
    server, data = await two_host_server(platform, user)
    await servers.start(user, server)
    assert (hv_a.held(), hv_b.held()) == ([server], [])
    assert hv_b.exported == {server: {data}} and hv_a.exported == {}
    assert hv_b.requests == [ExportRequest(server, data, "disk", "hv-a", read_only=False)]
    # Its VM opens it over NBD, its LUKS layer there (the passphrase goes to hv-a only).
    disk = {d.slot: d for d in hv_a.vm(server).spec.disks}["ide:0:1"]
    assert disk.nbd == NbdSource("10.0.0.12", PORT, data, "hv-b")
    assert (disk.format, disk.drive) == ("luks", "")
    await servers.stop(user, server)
    assert hv_b.exported == {}

    # Whatever ends the VM ends the export: a crash too.
    await servers.start(user, server)
    assert hv_b.exported == {server: {data}}
    await hv_a.crash(server)
    assert (await servers.info(user, server))["status"] == "dead"
    assert hv_b.exported == {}
    await servers.close()


async def test_a_start_that_fails_ends_the_exports_it_made(two_agents: Hosts) -> None:
    platform, hv_a, hv_b, user = two_agents
    await platform.servers.recover()
    server, data = await two_host_server(platform, user)
    hv_a.fail_next_start()
    with pytest.raises(HypervisorError, match="simulated"):
        await platform.servers.start(user, server)
    assert hv_b.requests and hv_b.exported == {} and hv_a.held() == []
    assert "claimed" not in platform.drives.info(user, data)
    # An export refused by the drive's host fails the start as well, nothing left.
    hv_b.fail_export = True
    with pytest.raises(HypervisorError, match="cannot export"):
        await platform.servers.start(user, server)
    assert hv_a.held() == [] and "claimed" not in platform.drives.info(user, data)
    await platform.servers.close()


async def test_a_drive_on_a_host_that_is_down_makes_the_start_503_naming_it(
    two_agents: Hosts,
) -> None:
    platform, hv_a, hv_b, user = two_agents
    await platform.servers.recover()
    server, data = await two_host_server(platform, user)
    platform.hosts.offline = frozenset({"hv-b"})  # as the last look at the heartbeats found
    with pytest.raises(UnavailableError, match="Host hv-b is offline") as refused:
        await platform.servers.start(user, server)
    assert (refused.value.status, refused.value.kind) == (503, "failed")
    assert hv_b.requests == [] and hv_a.held() == []
    assert "claimed" not in platform.drives.info(user, data)
    await platform.servers.close()


async def test_exports_no_running_vm_uses_are_ended_when_the_agent_is_found(
    two_agents: Hosts,
) -> None:
    platform, _hv_a, hv_b, user = two_agents
    server, data = await two_host_server(platform, user)
    left = "3b0f1f6e-8d2a-4e55-9a59-1c2d3e4f5a6b"  # a server whose start never ended
    hv_b.exported = {left: {data}}
    await platform.servers.recover()  # the daemon's start: the agents found
    assert hv_b.exported == {}
    await platform.servers.start(user, server)
    await platform.servers.lifecycle.watch_agents()  # nothing stale: the running one stays
    assert hv_b.exported == {server: {data}}
    await platform.servers.stop(user, server)
    await platform.servers.close()


class OtherNodeStarting:
    """The other API nodes' operations as the database tells them: one starts `server`."""

    def __init__(self, server: str) -> None:
        self.server = server

    def others(self, uuid: str, within: object = None) -> Counter[str]:
        return Counter({START: 1} if uuid == self.server else {})

    def objects_of_others(self) -> set[str]:
        return {self.server}


async def test_an_export_another_nodes_start_made_stays_when_this_node_finds_the_agent(
    two_agents: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another API node has exported the drive for a start it is making (the server not
    active yet): this node's start, finding hv-b's agent, took the export for a dead
    start's and ended it, under the other node's VM opening it."""
    platform, _hv_a, hv_b, user = two_agents
    server, data = await two_host_server(platform, user)
    hv_b.exported = {server: {data}}
    operations = platform.servers.lifecycle.operations
    monkeypatch.setattr(operations, "_nodes", OtherNodeStarting(server))
    await platform.servers.recover()
    assert hv_b.exported == {server: {data}}
    await platform.servers.close()


async def test_a_drain_leaves_no_exported_drive_behind_and_moves_no_server_using_one(
    two_agents: Hosts,
) -> None:
    platform, hv_a, hv_b, user = two_agents
    await platform.servers.recover()
    server, data = await two_host_server(platform, user)
    await platform.servers.start(user, server)
    with pytest.raises(BusyError, match=f"drive {data} to server {server}"):
        await platform.servers.drain("hv-b")
    outcome = await platform.servers.drain("hv-a")
    assert "over NBD" in outcome[server] and "not moved" in outcome[server]
    assert hv_a.held() == [server] and hv_b.exported == {server: {data}}
    await platform.servers.stop(user, server)
    await platform.servers.close()
