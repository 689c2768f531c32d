"""Servers on the hosts of their boot drives, each host's VMs through its own driver
(services/cluster/host_drivers.py): real SQLite and drive files, two fake hypervisors standing for
this host's in-process driver and another host's agent (fast; the same over real agents and
mutual TLS is tests/cluster/test_host_agents.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from openhosting.errors import FullError, UnavailableError
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from openhosting.store import hosts as host_store
from openhosting.store import servers as server_store
from openhosting.store.tables import drives, hosts
from tests.services.fake_platform import REMOTE_CAPACITY, platform_with_agent_host

SERVER = {"name": "s", "cpu": "500", "mem": "64", "persistent": "true"}


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, FakeHypervisor, str]]:
    """A platform on its own host, with host `hv-a` whose agent is a fake of its own."""
    with platform_with_agent_host(tmp_path) as hosts_and_user:
        yield hosts_and_user


async def drive_on(platform: Platform, user: str, host: str) -> str:
    drive = str((await platform.drives.create(user, {"name": "d", "size": "1M"}))["drive"])
    with platform.engine.begin() as connection:
        connection.execute(update(drives).where(drives.c.uuid == drive).values(host=host))
    return drive


async def server_on(platform: Platform, user: str, host: str, start: bool) -> tuple[str, str]:
    """A server booting from a new drive on `host`: its UUID and the drive's."""
    drive = await drive_on(platform, user, host)
    made = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=start)
    return str(made["server"]), drive


async def test_a_server_runs_on_its_boot_drives_host_through_that_hosts_driver(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()  # connects to the agents
    remote_drive = await drive_on(platform, user, "hv-a")
    local_drive = await drive_on(platform, user, platform.hosts.name)
    there = await platform.servers.create(user, {**SERVER, "ide:0:0": remote_drive}, start=True)
    here = await platform.servers.create(user, {**SERVER, "ide:0:0": local_drive}, start=True)
    s_there, s_here = str(there["server"]), str(here["server"])
    assert (remote.held(), local.held()) == ([s_there], [s_here])
    assert (there["host"], here["host"]) == ("hv-a", platform.hosts.name)
    with platform.engine.connect() as connection:
        row = server_store.get_server(connection, s_there)
    assert row is not None and row.host == "hv-a"

    # The other host's events reach the lifecycle: a crash there makes the server dead.
    await remote.crash(s_there)
    assert (await platform.servers.info(user, s_there))["status"] == "dead"
    # A start and a stop go to the host's own driver.
    await platform.servers.start(user, s_there)
    assert remote.held() == [s_there]
    await platform.servers.stop(user, s_there)
    assert remote.held() == [] and local.held() == [s_here]
    await platform.servers.stop(user, s_here)
    await platform.servers.close()


async def test_a_boot_drive_on_a_host_with_no_driver_here_is_full_naming_the_host(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()
    drive = await drive_on(platform, user, "hv-gone")
    server = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=False)
    with pytest.raises(FullError, match="hv-gone"):
        await platform.servers.start(user, str(server["server"]))
    assert (remote.held(), local.held()) == ([], [])
    # Nothing of the refused start is left: its drive is free.
    assert "claimed" not in platform.drives.info(user, drive)
    await platform.servers.close()


async def test_a_host_gone_offline_shows_in_info_refuses_its_commands_and_takes_nothing(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, _local, remote, user = two_hosts
    servers = platform.servers
    await servers.recover()
    running, drive = await server_on(platform, user, "hv-a", start=True)
    stopped, _other = await server_on(platform, user, "hv-a", start=False)
    here = await drive_on(platform, user, platform.hosts.name)
    assert "host:state" not in await servers.info(user, running)

    # hv-a silent for longer than host.offline_seconds, as the next look finds it.
    with platform.engine.begin() as connection:
        connection.execute(update(hosts).where(hosts.c.name == "hv-a").values(heartbeat_at=0.0))
    assert platform.hosts.refresh_offline() == {"hv-a"}
    platform.hosts.heartbeat()  # this host's beat marks the silent one in its row
    with platform.engine.connect() as connection:
        row = host_store.get_host(connection, "hv-a")
    assert row is not None and row.state == "offline"
    assert platform.hosts.offline == {"hv-a"}
    info = await servers.info(user, running)
    assert (info["status"], info["host"], info["host:state"]) == ("active", "hv-a", "offline")
    listed = {str(i["server"]): i for i in await servers.info_all(user)}
    assert listed[running]["host:state"] == "offline"
    assert listed[stopped]["status"] == "stopped"
    drive_info = platform.drives.info(user, drive)
    assert (drive_info["host"], drive_info["host:state"]) == ("hv-a", "offline")
    assert "host:state" not in platform.drives.info(user, here)

    # Its servers' commands: 503 failed naming the host, nothing done.
    for command in (servers.stop, servers.shutdown, servers.reset, servers.destroy):
        with pytest.raises(UnavailableError, match="Host hv-a is offline") as refused:
            await command(user, running)
        assert (refused.value.status, refused.value.kind) == (503, "failed")
    with pytest.raises(UnavailableError, match="Host hv-a is offline"):
        await servers.start(user, stopped)  # its boot drive is there
    assert remote.held() == [running]
    # Placement never picks it: this host is the only one left (which then takes every
    # drive, `avoid` only recorded, as on a platform of one host).
    kept_off = await platform.drives.create(user, {"name": "x", "size": "1M", "avoid": here})
    assert kept_off["host"] == platform.hosts.name

    # Back: its agent's next report makes it online; its server answers commands again.
    platform.hosts.heartbeat({"hv-a": REMOTE_CAPACITY})
    assert platform.hosts.offline == frozenset()
    with platform.engine.connect() as connection:
        row = host_store.get_host(connection, "hv-a")
    assert row is not None and (row.state, row.cores) == ("online", REMOTE_CAPACITY.cores)
    assert "host:state" not in await servers.info(user, running)
    made = await platform.drives.create(user, {"name": "x", "size": "1M", "avoid": here})
    assert made["host"] == "hv-a"
    await servers.stop(user, running)
    assert remote.held() == []
    await servers.close()


async def test_a_vm_left_by_an_agent_that_died_in_its_start_is_stopped_by_the_watch(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    # The agent ran QEMU, then died before answering: the start failed (its claims and
    # NICs undone), and the restarted agent finds the VM running, held by nobody. Before,
    # the watch adopted only active servers' VMs and left this one running unseen, while
    # the server, stopped, could be started again: a second guest on its drive.
    platform, _local, remote, user = two_hosts
    await platform.servers.recover()
    server, drive = await server_on(platform, user, "hv-a", start=False)
    remote.lose_next_start()
    servers = platform.servers
    with pytest.raises(HypervisorError, match="simulated"):
        await servers.start(user, server)
    assert (await remote.unheld(), remote.held()) == ([server], [])
    assert "claimed" not in platform.drives.info(user, drive)

    await servers.lifecycle.watch_agents()
    assert (await remote.unheld(), remote.held()) == ([], [])
    assert (await servers.info(user, server))["status"] == "stopped"
    # And it starts again, one VM on its drive.
    await servers.start(user, server)
    assert remote.held() == [server]
    await servers.stop(user, server)
    await servers.close()
