"""Standard drives for servers on an agent's host (services/drives/standard_copies.py), on the fake
platform: host hv-a's agent is a fake driver, its drive files a `LocalDriveStorage` and its
image cache a real `ImageCache` in a directory of their own, called in process (the same over
a real agent and mutual TLS is tests/agent/test_agent_image_cache.py; with QEMU,
tests/cluster/test_standard_drives_on_agents.py).

The first start on hv-a fills hv-a's copy and its VM opens it as a cdrom named by the drive's
UUID and generation; later starts, and starts at once, fill nothing more; a copy that cannot
be made fails the start with a 503 naming hv-a and leaves nothing; a server on this host opens
the standard drive's own file; the look at hv-a's files removes the copies of standard drives
removed or of another generation.
"""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.agent.image_cache import ImageCache
from openhosting.errors import FailedError, UnavailableError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.drives.drive_orphans import DriveOrphans
from openhosting.services.drives.drives import AttachableDrive
from openhosting.services.drives.standard_copies import HostImageCache, StandardCopies
from openhosting.services.platform import Platform
from openhosting.storage.drive_storage import DriveStorage
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.storage_calls import CachedCopy
from openhosting.store import drives as drive_store
from tests.services.fake_platform import platform_with_agent_host

MARKER = b"OH-STANDARD-MARKER"
DRIVE = {"name": "d", "size": "1M", "encryption:cipher": "none"}


class AgentCache:
    """hv-a's image cache, called in process; `fail`: its next fill's error."""

    host = "hv-a"

    def __init__(self, directory: Path) -> None:
        self.cache = ImageCache(directory)
        self.fills = 0
        self.fail: Exception | None = None

    async def lookup(self, drive: str, generation: str) -> bool:
        return self.cache.has(drive, generation)

    async def copies(self) -> list[CachedCopy]:
        return self.cache.copies()

    async def remove(self, drive: str, generation: str) -> bool:
        return self.cache.remove(drive, generation)

    async def fill(
        self, drive: str, generation: str, size: int, pieces: AsyncIterator[bytes | bytearray]
    ) -> int:
        self.fills += 1
        got = [memoryview(bytes(piece)) async for piece in pieces]
        await asyncio.sleep(0.05)  # a fill takes a while: others starting meanwhile wait
        if self.fail is not None:
            raise self.fail
        return await asyncio.to_thread(self.cache.fill, drive, generation, size, got)


Setup = tuple[Platform, FakeHypervisor, AgentCache, str, str]


@pytest.fixture
def agent_host(tmp_path: Path) -> Iterator[Setup]:
    with platform_with_agent_host(tmp_path) as (platform, _local, remote, user):
        files = LocalDriveStorage(DriveTiers({"disk": tmp_path / "hv-a-drives"}))
        cache = AgentCache(tmp_path / "hv-a-cache")

        def connect(host: str, _address: str) -> DriveStorage:
            assert host == "hv-a"
            return files

        def cache_of(host: str) -> HostImageCache | None:
            return cache if host == "hv-a" else None

        platform.drives.storages.connector = connect
        lifecycle = platform.servers.lifecycle
        lifecycle.copies = StandardCopies(platform.engine, platform.drives.storages, cache_of)
        iso = tmp_path / "marker.iso"
        iso.write_bytes(MARKER.ljust(1 << 20, b"\0"))
        standard = platform.standard_drives.add(iso, "marker", media="cdrom")
        yield platform, remote, cache, user, str(standard["drive"])


async def drive_on(platform: Platform, user: str, host: str) -> str:
    first = await platform.drives.create(user, DRIVE)
    if first["host"] == host:
        return str(first["drive"])
    second = await platform.drives.create(user, {**DRIVE, "avoid": str(first["drive"])})
    assert second["host"] == host
    return str(second["drive"])


async def server_with(platform: Platform, user: str, boot: str, standard: str) -> str:
    config = {
        "name": "s", "cpu": "500", "mem": "64", "persistent": "true",
        "ide:0:0": boot, "ide:0:1": standard, "ide:0:1:media": "cdrom", "boot": "ide:0:0",
    }  # fmt: skip
    return str((await platform.servers.create(user, config, start=False))["server"])


def generation_of(platform: Platform, standard: str) -> str:
    return platform.drives.attachable(platform_user(platform, standard), standard).generation


def platform_user(platform: Platform, standard: str) -> str:
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, standard)
    assert row is not None
    return row.user


async def test_the_first_start_on_an_agents_host_fills_its_copy_and_later_ones_reuse_it(
    agent_host: Setup,
) -> None:
    platform, remote, cache, user, standard = agent_host
    await platform.servers.recover()
    boot = await drive_on(platform, user, "hv-a")
    server = await server_with(platform, user, boot, standard)

    await platform.servers.start(user, server)
    assert (await platform.servers.info(user, server))["host"] == "hv-a"
    generation = generation_of(platform, standard)
    (cdrom,) = [disk for disk in remote.host.vms[server].spec.disks if disk.slot == "ide:0:1"]
    assert (cdrom.drive, cdrom.tier, cdrom.cache, cdrom.media) == (
        standard, "", generation, "cdrom",
    )  # fmt: skip
    assert cdrom.nbd is None
    copy = cache.cache.path_of(standard, generation)
    assert copy.read_bytes().startswith(MARKER) and copy.stat().st_size == 1 << 20
    assert cache.fills == 1

    await platform.servers.stop(user, server)
    await platform.servers.start(user, server)
    assert cache.fills == 1  # found there: nothing sent
    await platform.servers.stop(user, server)


async def test_starts_at_once_on_one_host_fill_one_copy(agent_host: Setup) -> None:
    platform, remote, cache, user, standard = agent_host
    await platform.servers.recover()
    boots = [await drive_on(platform, user, "hv-a") for _ in range(2)]
    servers = [await server_with(platform, user, boot, standard) for boot in boots]

    await asyncio.gather(*(platform.servers.start(user, server) for server in servers))
    assert sorted(remote.held()) == sorted(servers)
    assert cache.fills == 1
    assert [copy.drive for copy in cache.cache.copies()] == [standard]


async def test_a_copy_that_cannot_be_made_fails_the_start_naming_the_host(
    agent_host: Setup,
) -> None:
    platform, remote, cache, user, standard = agent_host
    await platform.servers.recover()
    server = await server_with(platform, user, await drive_on(platform, user, "hv-a"), standard)
    cache.fail = FailedError("Cannot write a copy of standard drive: Read-only file system")

    with pytest.raises(UnavailableError, match="Host hv-a cannot hold a copy") as refused:
        await platform.servers.start(user, server)
    assert refused.value.status == 503
    assert "Read-only file system" in refused.value.message
    assert remote.held() == []
    assert (await platform.servers.info(user, server))["status"] == "stopped"
    assert cache.cache.copies() == [] and not cache.cache.directory.exists()

    cache.fail = None  # the next start fills it
    await platform.servers.start(user, server)
    assert remote.held() == [server]


async def test_a_server_on_the_api_nodes_own_host_opens_the_standard_drives_own_file(
    agent_host: Setup,
) -> None:
    platform, _remote, cache, user, standard = agent_host
    copies = platform.servers.lifecycle.copies
    assert copies is not None
    attached = platform.drives.attachable(user, standard)
    local = platform.servers.lifecycle.drivers.local_name
    assert attached.host == local and attached.generation
    assert copies.to_copy(local, [attached]) == []  # its own host: the file as it is
    assert copies.to_copy("hv-a", [attached]) == [attached]
    assert copies.to_copy("hv-b", [attached]) == []  # no agent's cache there
    users = dataclasses.replace(attached, generation="")  # not a standard drive
    assert copies.to_copy("hv-a", [users]) == []
    assert cache.fills == 0


async def test_the_look_at_a_hosts_files_removes_copies_of_standard_drives_gone_or_changed(
    agent_host: Setup,
) -> None:
    platform, _remote, cache, user, standard = agent_host
    await platform.servers.recover()
    copies = platform.servers.lifecycle.copies
    assert copies is not None
    attached: AttachableDrive = platform.drives.attachable(user, standard)
    await copies.provide("s", "hv-a", attached)
    current = cache.cache.path_of(standard, attached.generation)
    older = cache.cache.path_of(standard, "1")
    older.write_bytes(b"older bytes")
    orphans = DriveOrphans(
        platform.engine, platform.drives.storages, platform.servers.lifecycle.operations,
        grace=600, interval=3600, hosts_up=platform.servers.lifecycle.agents_up, copies=copies,
    )  # fmt: skip

    await orphans.reconcile("hv-a")
    assert current.exists() and not older.exists()

    platform.standard_drives.remove(standard)
    await orphans.reconcile("hv-a")
    assert cache.cache.copies() == []


async def test_a_server_moved_to_an_agents_host_opens_its_copy_there(agent_host: Setup) -> None:
    platform, remote, cache, user, standard = agent_host
    local = platform.servers.lifecycle.driver
    assert isinstance(local, FakeHypervisor)
    await platform.servers.recover()
    here = platform.hosts.name
    boot = await drive_on(platform, user, here)
    server = await server_with(platform, user, boot, standard)
    await platform.servers.start(user, server)
    assert local.held() == [server] and cache.fills == 0  # this host: the file itself

    assert (await platform.servers.drain(here))[server] == "moved hv-a"
    (cdrom,) = [disk for disk in remote.host.vms[server].spec.disks if disk.slot == "ide:0:1"]
    assert (cdrom.drive, cdrom.cache) == (standard, generation_of(platform, standard))
    assert cache.fills == 1 and cache.cache.has(standard, cdrom.cache)

    assert (await platform.servers.drain("hv-a"))[server] == f"moved {here}"
    (cdrom,) = [disk for disk in local.host.vms[server].spec.disks if disk.slot == "ide:0:1"]
    assert cdrom.cache == "" and cdrom.path == platform.drives.attachable(user, standard).path
    await platform.servers.stop(user, server)
