"""A real `openhosting-agent` (fake hypervisor) whose drive files the control plane reconciles
with its rows (services/drives/drive_orphans.py) over mutual TLS: an old file no row names is
removed there, a fresh one (a create under way) and a drive's own are kept; a drive destroyed while
the agent was down keeps its file until the agent is back on its port, then it goes."""

import asyncio
import os
import time
import uuid
from pathlib import Path

from openhosting.hypervisor.agent_connector import agent_connector, storage_connector
from openhosting.services.drives.drive_orphans import DriveOrphans
from openhosting.services.platform import Platform, open_platform
from openhosting.storage.drive_storage import DriveFile
from testbed.agent_process import agent_process, make_cluster
from tests.conftest import config_in

GRACE = 600.0
DRIVE = {"name": "d", "size": "1M", "encryption:cipher": "none"}
WAIT = 10.0  # seconds at most for a removal to show


def aged(path: Path) -> None:
    then = time.time() - GRACE - 60
    os.utime(path, (then, then))


async def drive_on_agent(platform: Platform, user: str) -> str:
    first = await platform.drives.create(user, DRIVE)
    if first["host"] == "hv-a":
        return str(first["drive"])
    second = await platform.drives.create(user, {**DRIVE, "avoid": str(first["drive"])})
    assert second["host"] == "hv-a"
    return str(second["drive"])


async def gone(path: Path) -> None:
    async with asyncio.timeout(WAIT):
        while path.exists():
            await asyncio.sleep(0.05)


async def test_an_agents_orphan_files_go_at_its_reconnection(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path / "cluster")
    agent_dir = tmp_path / "hv-a"
    drives_dir = agent_dir / "state" / "drives"  # the agent's own drive directory
    platform = open_platform(
        config_in(tmp_path, hypervisor={"driver": "fake"}, host={"name": "hv-here"})
    )
    lifecycle = platform.servers.lifecycle
    orphans = DriveOrphans(
        platform.engine, platform.drives.storages, lifecycle.operations,
        grace=GRACE, interval=3600, hosts_up=lifecycle.agents_up,
    )  # fmt: skip
    lifecycle.agent_listeners.append(orphans.wake)
    running: asyncio.Task[None] | None = None
    try:
        with agent_process(agent_dir, cluster.host("hv-a")) as agent:
            address = agent.address
            platform.hosts.register()
            platform.hosts.set_agent("hv-a", address)
            lifecycle.drivers.connector = agent_connector(cluster.state)
            platform.drives.storages.connector = storage_connector(cluster.state)
            user = platform.accounts.create_user().uuid
            await platform.servers.recover()  # connected: hv-a woken
            running = asyncio.create_task(orphans.run())
            drive = await drive_on_agent(platform, user)
            storage = platform.drives.storages.of("hv-a")
            old, fresh = str(uuid.uuid4()), str(uuid.uuid4())
            for made in (old, fresh):
                await storage.create(made, "disk", 1 << 20, None)
            for name in (drive, old):
                aged(drives_dir / f"{name}.img")
            listed = await storage.list_files("", 1000)
            assert {file.drive for file in listed} == {drive, old, fresh}
            assert all(isinstance(file, DriveFile) and file.tier == "disk" for file in listed)

            orphans.wake("hv-a")  # as a reconnection does
            await gone(drives_dir / f"{old}.img")
            assert (drives_dir / f"{fresh}.img").exists()
            assert (drives_dir / f"{drive}.img").exists()

        # The agent is down: the watch finds it so, and a destroy leaves the file there.
        await lifecycle.watch_agents()
        assert "hv-a" not in lifecycle.agents_up()
        await platform.drives.destroy(user, drive)
        assert (drives_dir / f"{drive}.img").exists()

        with agent_process(agent_dir, cluster.host("hv-a"), listen=address):
            await lifecycle.watch_agents()  # back on its port
            await gone(drives_dir / f"{drive}.img")
            assert (drives_dir / f"{fresh}.img").exists()
    finally:
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await platform.servers.close()
        await platform.drives.storages.close()
        platform.close()
