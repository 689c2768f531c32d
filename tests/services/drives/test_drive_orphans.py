"""An agent's drive files that no drive row names there (services/drives/drive_orphans.py): old ones
removed, fresh ones (a create writing its file before its row) kept, a move's files kept while
it runs, the listing paged; a drive destroyed while its agent was down goes once the watch
finds the agent back. Fast: the agent's files are a `LocalDriveStorage` in a directory of
their own, reached by the platform as that host's storage (the same over a real agent and
mutual TLS is tests/agent/test_agent_orphans.py)."""

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.errors import UnavailableError
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.drives.drive_orphans import DriveOrphans
from openhosting.services.operations import MOVE
from openhosting.services.platform import Platform
from openhosting.storage.drive_storage import FILES_PAGE, DriveFile, DriveStorage
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.store import drives as drive_store
from tests.services.fake_platform import platform_with_agent_host

GRACE = 600.0
DRIVE = {"name": "d", "size": "1M", "encryption:cipher": "none"}
SERVER = {"name": "s", "cpu": "500", "mem": "64", "persistent": "true"}


class AgentFiles(LocalDriveStorage):
    """Host hv-a's drive files, in a directory of their own; `down`: its agent does not
    answer."""

    down = False

    def _answer(self) -> None:
        if self.down:
            raise UnavailableError("Host hv-a's agent did not answer")

    async def destroy(self, drive: str, tier: str) -> None:
        self._answer()
        await super().destroy(drive, tier)

    async def list_files(self, after: str, limit: int = FILES_PAGE) -> list[DriveFile]:
        self._answer()
        return await super().list_files(after, limit)


Setup = tuple[Platform, FakeHypervisor, AgentFiles, str]


@pytest.fixture
def agent_host(tmp_path: Path) -> Iterator[Setup]:
    with platform_with_agent_host(tmp_path) as (platform, _local, remote, user):
        files = AgentFiles(DriveTiers({"disk": tmp_path / "hv-a-drives"}))

        def connect(host: str, _address: str) -> DriveStorage:
            assert host == "hv-a"
            return files

        platform.drives.storages.connector = connect
        yield platform, remote, files, user


def orphans_of(platform: Platform, page: int = 1000) -> DriveOrphans:
    lifecycle = platform.servers.lifecycle
    return DriveOrphans(
        platform.engine, platform.drives.storages, lifecycle.operations,
        grace=GRACE, interval=3600, hosts_up=lifecycle.agents_up, page=page,
    )  # fmt: skip


async def drive_on_agent(platform: Platform, user: str) -> str:
    """A drive placed on hv-a (kept apart from one of this host's if placement chose it)."""
    first = await platform.drives.create(user, DRIVE)
    if first["host"] == "hv-a":
        return str(first["drive"])
    second = await platform.drives.create(user, {**DRIVE, "avoid": str(first["drive"])})
    assert second["host"] == "hv-a"
    return str(second["drive"])


def file_of(files: LocalDriveStorage, drive: str) -> Path:
    return files.tiers.of("disk").path_of(drive)


def age(path: Path, seconds: float = GRACE + 60) -> None:
    """Make the file look last modified `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


async def orphan(files: LocalDriveStorage, *, old: bool = True) -> Path:
    drive = str(uuid.uuid4())
    await files.create(drive, "disk", 1 << 20, None)
    path = file_of(files, drive)
    if old:
        age(path)
    return path


async def test_old_files_no_row_names_go_fresh_ones_and_the_hosts_own_stay(
    agent_host: Setup,
) -> None:
    platform, _remote, files, user = agent_host
    kept = await drive_on_agent(platform, user)
    age(file_of(files, kept))
    old, fresh = await orphan(files), await orphan(files, old=False)
    # Another host's drive (this one's) with a stale copy on hv-a: no move runs, it goes.
    here = (await platform.drives.create(user, DRIVE))["drive"]
    if platform.drives.info(user, str(here))["host"] == "hv-a":
        here = (await platform.drives.create(user, {**DRIVE, "avoid": str(here)}))["drive"]
    await files.create(str(here), "disk", 1 << 20, None)
    age(file_of(files, str(here)))

    assert await orphans_of(platform).reconcile("hv-a") == 2
    assert not old.exists() and not file_of(files, str(here)).exists()
    assert fresh.exists() and file_of(files, kept).exists()
    assert platform.drives.info(user, kept)["status"] == "active"


async def test_a_file_of_a_drive_whose_server_is_moving_stays(agent_host: Setup) -> None:
    platform, _remote, files, user = agent_host
    await platform.servers.recover()
    drive = await drive_on_agent(platform, user)
    created = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=True)
    server = str(created["server"])
    # The target's copy of a drive whose row still names the source (this host).
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, drive, host=platform.hosts.name)
    age(file_of(files, drive))
    orphans = orphans_of(platform)
    async with platform.servers.lifecycle.operations.turn(server, MOVE):
        assert await orphans.reconcile("hv-a") == 0
    assert file_of(files, drive).exists()
    # The move over with the row still naming the other host: a leftover, removed.
    assert await orphans.reconcile("hv-a") == 1
    assert not file_of(files, drive).exists()


async def test_the_listing_is_paged(agent_host: Setup) -> None:
    platform, _remote, files, _user = agent_host
    paths = [await orphan(files) for _ in range(5)]
    assert await orphans_of(platform, page=2).reconcile("hv-a") == 5
    assert not any(path.exists() for path in paths)


async def test_a_drive_destroyed_while_its_agent_was_down_goes_when_it_is_back(
    agent_host: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, remote, files, user = agent_host
    lifecycle = platform.servers.lifecycle
    orphans = orphans_of(platform)
    lifecycle.agent_listeners.append(orphans.wake)
    await platform.servers.recover()
    running = asyncio.create_task(orphans.run())
    try:
        drive = await drive_on_agent(platform, user)
        path = file_of(files, drive)
        age(path)  # a drive in use for a while

        async def down() -> list[str]:
            raise HypervisorError("host agent hv-a: connection refused")

        files.down = True
        monkeypatch.setattr(remote, "unheld", down)
        await lifecycle.watch_agents()  # finds it down
        await platform.drives.destroy(user, drive)  # its row goes, its file cannot
        assert path.exists()

        files.down = False
        monkeypatch.undo()
        await lifecycle.watch_agents()  # back: its files are looked at
        async with asyncio.timeout(5):
            while path.exists():
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_moves_target_file_stays_when_its_agent_is_found_back_mid_move(
    agent_host: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server moves from this host to hv-a; its drive has been mirrored into hv-a's own
    file, whose row names this host until the move ends, when hv-a's agent is found back
    and its files looked at: the file is the move's and stays."""
    platform, remote, files, user = agent_host
    lifecycle = platform.servers.lifecycle
    local = lifecycle.driver
    assert isinstance(local, FakeHypervisor)
    orphans = orphans_of(platform)
    await platform.servers.recover()
    on_agent = await drive_on_agent(platform, user)
    drive = str((await platform.drives.create(user, {**DRIVE, "avoid": on_agent}))["drive"])
    assert platform.drives.info(user, drive)["host"] == platform.hosts.name
    created = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=True)
    server = str(created["server"])
    landed = file_of(files, drive)
    removed_meanwhile: list[int] = []
    migrate_out = local.migrate_out

    async def mirrored_then_agent_back(*args: object, **kwargs: object) -> None:
        await migrate_out(*args, **kwargs)  # type: ignore[arg-type]
        age(landed)  # a long mirror: the file's age is no shield

        async def down() -> list[str]:
            raise HypervisorError("host agent hv-a: connection refused")

        monkeypatch.setattr(remote, "unheld", down)
        await lifecycle.watch_agents()
        monkeypatch.undo()
        await lifecycle.watch_agents()  # back: its files are looked at
        removed_meanwhile.append(await orphans.reconcile("hv-a"))

    monkeypatch.setattr(local, "migrate_out", mirrored_then_agent_back)
    outcome = await platform.servers.drain(platform.hosts.name)
    monkeypatch.undo()

    assert outcome == {server: "moved hv-a"}
    assert removed_meanwhile == [0] and landed.exists()
    assert platform.drives.info(user, drive)["host"] == "hv-a"
    assert await orphans.reconcile("hv-a") == 0 and landed.exists()  # the drive's own now
    await platform.servers.stop(user, server)


async def test_this_hosts_files_go_only_when_old_and_no_row_at_all_names_them(
    agent_host: Setup,
) -> None:
    """The periodic look at this host's own directory: the rule of the start's repair (a
    file of a drive whose row names another host is the operator's, not an orphan)."""
    platform, _remote, _files, user = agent_host
    local = platform.drives.storages.local
    assert isinstance(local, LocalDriveStorage)
    mine = await platform.drives.create(user, DRIVE)
    if mine["host"] == "hv-a":
        mine = await platform.drives.create(user, {**DRIVE, "avoid": str(mine["drive"])})
    agents = await drive_on_agent(platform, user)
    old, fresh = await orphan(local), await orphan(local, old=False)
    await local.create(agents, "disk", 1 << 20, None)  # from before drives were streamed
    for drive in (str(mine["drive"]), agents):
        age(local.tiers.of("disk").path_of(drive))

    assert await orphans_of(platform).reconcile(platform.drives.storages.local_name) == 1
    assert not old.exists()
    assert fresh.exists()
    assert local.tiers.of("disk").path_of(str(mine["drive"])).exists()
    assert local.tiers.of("disk").path_of(agents).exists()
