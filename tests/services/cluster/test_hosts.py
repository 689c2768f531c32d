"""This host's capacity, its registration and heartbeat, and every host's load
(services/cluster/hosts.py), on a real SQLite file and the real /proc and file systems."""

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest
from sqlalchemy import Connection, update

from openhosting.config import Config, load_config
from openhosting.errors import FullError, MissingError, UsageError
from openhosting.host_capacity import (
    HostCapacity,
    file_system_bytes,
    measure_capacity,
    memory_total_mb,
)
from openhosting.hypervisor.calls import CallError, decode
from openhosting.services.cluster.hosts import Hosts, measure_host
from openhosting.services.platform import open_platform
from openhosting.store import hosts as host_store
from openhosting.store.records import HostRecord
from openhosting.store.tables import drives, servers
from openhosting.store.tables import hosts as host_table
from tests.conftest import config_in

MEMINFO = "MemTotal:        8040352 kB\nMemFree:          123456 kB\n"


def host_config(tmp_path: Path, **host: object) -> Config:
    return config_in(
        tmp_path,
        hypervisor={"core_mhz": 2345, "driver": "fake"},
        storage={"tiers": f"ssd={tmp_path / 'ssd'}"},
        host={"name": "hv-test", **host},
    )


def test_memory_is_meminfos_total_in_mib() -> None:
    assert memory_total_mb(MEMINFO) == 8040352 // 1024
    with pytest.raises(ValueError, match="MemTotal"):
        memory_total_mb("MemFree: 1 kB\n")


def test_a_host_measures_cores_mhz_memory_less_reserve_and_each_tiers_file_system(
    tmp_path: Path,
) -> None:
    config = host_config(tmp_path, memory_reserve_mb=512)
    measured = measure_host(config, 100.0)
    with open("/proc/meminfo") as meminfo:
        total = memory_total_mb(meminfo.read())
    stats = os.statvfs(tmp_path)
    assert measured.name == "hv-test"
    assert measured.cores == os.cpu_count()
    assert measured.core_mhz == 2345
    assert measured.memory_mb == total - 512
    # Neither tier directory exists yet: the file system they will be made on counts.
    assert measured.disk_bytes_by_tier == {
        "disk": stats.f_blocks * stats.f_frsize,
        "ssd": stats.f_blocks * stats.f_frsize,
    }
    assert file_system_bytes(Path("/nonexistent/deeper")) == file_system_bytes(Path("/"))


def test_the_host_name_defaults_to_the_hostname(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"state_dir": str(tmp_path / "state")})
    assert config.host_name == os.uname().nodename


def test_a_registered_host_shows_its_drives_and_active_servers_and_goes_offline_when_silent(
    tmp_path: Path,
) -> None:
    config = host_config(tmp_path, offline_seconds=20)
    platform = open_platform(config)
    try:
        platform.hosts.register()
        with platform.engine.begin() as connection:
            # Another host that last spoke a minute ago.
            stale = measure_host(config, 0.0)
            stale = dataclasses.replace(stale, name="hv-gone")
            host_store.register_host(connection, stale)
            host_store.heartbeat(connection, "hv-gone", stale.heartbeat_at)
        views = {view.record.name: view for view in platform.hosts.overview()}
    finally:
        platform.close()
    assert views["hv-test"].state == "online" and views["hv-test"].heartbeat_age < 20
    assert views["hv-gone"].state == "offline" and views["hv-gone"].heartbeat_age > 20


async def test_the_heartbeat_renews_the_hosts_time_until_cancelled(tmp_path: Path) -> None:
    config = host_config(tmp_path, heartbeat_seconds=1)
    platform = open_platform(config)
    try:
        hosts: Hosts = platform.hosts
        first = hosts.register().heartbeat_at
        beating = asyncio.create_task(hosts.heartbeat_every())
        try:
            for _ in range(40):  # bounded: about 4 s
                await asyncio.sleep(0.1)
                with platform.engine.connect() as connection:
                    record = host_store.get_host(connection, "hv-test")
                if record is not None and record.heartbeat_at > first:
                    break
            assert record is not None and record.heartbeat_at > first
        finally:
            beating.cancel()
            with pytest.raises(asyncio.CancelledError):
                await beating
    finally:
        platform.close()


def test_a_heartbeat_after_the_row_went_registers_the_host_again(tmp_path: Path) -> None:
    platform = open_platform(host_config(tmp_path))
    try:
        platform.hosts.heartbeat()
        with platform.engine.connect() as connection:
            assert host_store.get_host(connection, "hv-test") is not None
    finally:
        platform.close()


def test_an_agent_reporting_more_than_a_hosts_row_holds_beats_no_host_offline(
    tmp_path: Path, postgres_url: str
) -> None:
    # One transaction beats every host a node reached: a figure PostgreSQL's INTEGER cannot
    # hold (an agent misconfigured, or lying) failed it whole, at every beat, and every host
    # went offline: no placement anywhere, every server's action 503.
    platform = open_platform(
        config_in(
            tmp_path,
            hypervisor={"core_mhz": 2345, "driver": "fake"},
            host={"name": "hv-test"},
            store={"url": postgres_url},
        )
    )
    try:
        hosts = platform.hosts
        hosts.register()
        hosts.set_agent("hv-a", "10.0.0.5:7430")
        hosts.set_agent("hv-b", "10.0.0.6:7430")
        # hv-a's answer to the capacity call, as the remote driver decodes it: refused (the
        # driver's call fails, and the node beats the hosts that answered: hv-b).
        for lying in (
            {"cores": 2**31, "core_mhz": 1000, "memory_mb": 1024, "disk_bytes_by_tier": {}},
            {"cores": 4, "core_mhz": 2**31, "memory_mb": 1024, "disk_bytes_by_tier": {}},
            {"cores": 4, "core_mhz": 1000, "memory_mb": 2**63, "disk_bytes_by_tier": {}},
            {"cores": 4, "core_mhz": 1000, "memory_mb": 1, "disk_bytes_by_tier": {"d": 2**63}},
        ):
            with pytest.raises(CallError, match="more than"):
                decode(HostCapacity, lying)
        # Tier names are shown as keys of `host list` (`disk:NAME`): one with a line break
        # put lines of the agent's choosing into the operator's listing.
        for tiers in ({"x\nstate online": 1}, {"Disk": 1}, {f"t{n}": 1 for n in range(65)}):
            with pytest.raises(CallError, match="tier"):
                decode(HostCapacity, {"cores": 4, "core_mhz": 1, "memory_mb": 1,
                                      "disk_bytes_by_tier": tiers})  # fmt: skip
        sound = HostCapacity(cores=4, core_mhz=1000, memory_mb=1024, disk_bytes_by_tier={})
        hosts.heartbeat({"hv-b": sound})
        assert {v.record.name for v in hosts.overview() if v.state == "online"} == {
            "hv-test",
            "hv-b",
        }
    finally:
        platform.close()


def test_a_host_registered_by_another_daemon_at_the_same_moment_is_updated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two API nodes of one host start at once: the other inserts the row between this one's
    # look for it and its insert (seen with two daemons on one PostgreSQL).
    platform = open_platform(host_config(tmp_path))
    try:
        register, raced = host_store.register_host, []

        def racing(connection: Connection, host: HostRecord) -> None:
            if not raced:
                raced.append(host.name)
                with platform.engine.begin() as other:
                    register(other, host)
                host_store.add_host(connection, host)  # what the look-then-insert meets
                return
            register(connection, host)

        monkeypatch.setattr(host_store, "register_host", racing)
        assert platform.hosts.register().name == "hv-test"
        assert raced == ["hv-test"]
        with platform.engine.connect() as connection:
            assert host_store.get_host(connection, "hv-test") is not None
    finally:
        platform.close()


def test_host_set_records_a_reachable_agent_and_registers_a_new_host_offline_until_reached(
    tmp_path: Path,
) -> None:
    platform = open_platform(host_config(tmp_path))
    try:
        hosts = platform.hosts
        hosts.register()
        for bad in ("hv-x", "hv-x:", ":7430", "hv-x:99999", "hv-x:port"):
            with pytest.raises(UsageError, match="HOST:PORT"):
                hosts.set_agent("hv-a", bad)
        with pytest.raises(UsageError, match="own host"):
            hosts.set_agent("hv-test", "127.0.0.1:7430")
        with pytest.raises(MissingError, match="hv-none"):
            hosts.set_agent("hv-none", "")
        # A host's name is the TLS server name every call to its agent asks for (`host add`
        # issues certificates to lowercase DNS names only): a row under another name was an
        # agent no daemon could ever reach, and "x..y" or "" made every daemon fail at start.
        for name in ("", "Bad Name", "x..y", "HV-A", "control", "h" * 254):
            with pytest.raises(UsageError, match="Invalid host name"):
                hosts.set_agent(name, "10.0.0.5:7430")
        for agent in ("bad host:7430", "a" * 300 + ":7430", "[::1:7430", "10.0.0.5:07430x"):
            with pytest.raises(UsageError, match="Invalid agent address"):
                hosts.set_agent("hv-a", agent)
        assert {view.record.name for view in hosts.overview()} == {"hv-test"}
        for agent in ("[fd00::5]:7430", "agent-1.example:7430"):
            assert hosts.set_agent("hv-a", agent).agent == agent
        record = hosts.set_agent("hv-a", "10.0.0.5:7430")
        assert (record.agent, record.heartbeat_at) == ("10.0.0.5:7430", 0.0)
        hosts.register()  # this host measured again: another host's agent stays
        views = {view.record.name: view for view in hosts.overview()}
        assert views["hv-a"].record.agent == "10.0.0.5:7430"
        assert views["hv-a"].state == "offline"
        assert hosts.set_agent("hv-a", "").agent == ""
    finally:
        platform.close()


async def test_a_server_goes_to_its_boot_drives_host_only_when_this_node_has_its_driver(
    tmp_path: Path,
) -> None:
    platform = open_platform(host_config(tmp_path))
    try:
        hosts = platform.hosts
        hosts.register()
        hosts.set_agent("hv-a", "127.0.0.1:7430")
        hosts.heartbeat({"hv-a": measure_capacity(platform.config)})  # its agent reached: online
        user = platform.accounts.create_user().uuid
        drive = str((await platform.drives.create(user, {"name": "d", "size": "1M"}))["drive"])
        with platform.engine.begin() as connection:
            connection.execute(update(drives).where(drives.c.uuid == drive).values(host="hv-a"))
        assert hosts.place_server(500, 64, drive, {"hv-test", "hv-a"}) == "hv-a"
        with pytest.raises(FullError, match="hv-a"):
            hosts.place_server(500, 64, drive, {"hv-test"})  # its agent not reached here
        # An active server's use counts against the host that runs it (servers.host).
        server = await platform.servers.create(
            user, {"name": "s", "cpu": "500", "mem": "64"}, start=False
        )
        with platform.engine.begin() as connection:
            connection.execute(
                update(servers).where(servers.c.uuid == server["server"])
                .values(status="active", host="hv-a")
            )  # fmt: skip
        views = {view.record.name: view.load for view in hosts.overview()}
        assert (views["hv-a"].used_mhz, views["hv-a"].used_memory_mb) == (500, 64)
        assert (views["hv-test"].used_mhz, views["hv-test"].used_memory_mb) == (0, 0)
    finally:
        platform.close()


async def test_avoid_counts_only_the_callers_own_drives(tmp_path: Path) -> None:
    """Another user's drive in `avoid` is ignored like a word that names no drive: a 507
    naming it (or a placement kept away from its host) would tell where it lives."""
    platform = open_platform(host_config(tmp_path))
    try:
        hosts = platform.hosts
        hosts.register()
        hosts.set_agent("hv-a", "127.0.0.1:7430")
        hosts.heartbeat({"hv-a": measure_capacity(platform.config)})
        with platform.engine.begin() as connection:  # hv-a online, but with no room at all
            connection.execute(
                update(host_table).where(host_table.c.name == "hv-a")
                .values(disk_bytes_by_tier='{"disk": 0, "ssd": 0}')
            )  # fmt: skip
        owner = platform.accounts.create_user().uuid
        other = platform.accounts.create_user().uuid
        mine = str((await platform.drives.create(owner, {"name": "d", "size": "1M"}))["drive"])
        # The owner's own drive keeps the new one off its host: no host is left.
        with pytest.raises(FullError, match=mine):
            await platform.drives.create(owner, {"name": "e", "size": "1M", "avoid": mine})
        # Another user naming it learns nothing: the drive is made, where there is room.
        made = await platform.drives.create(other, {"name": "e", "size": "1M", "avoid": mine})
        assert made["host"] == "hv-test"
    finally:
        platform.close()
