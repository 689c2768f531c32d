"""`openhosting-admin host list`: every host with its capacity, what is placed on it and its
state, from the real state directory."""

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from openhosting.admin.tool import main
from openhosting.config import load_config
from openhosting.services.cluster.hosts import measure_host
from openhosting.services.platform import open_platform
from openhosting.store import hosts as host_store
from openhosting.store import servers as server_store
from openhosting.wire.text import parse_properties_list


async def _place_things(state: Path) -> None:
    config = load_config(overrides={"state_dir": str(state), "first_user": False})
    platform = open_platform(config)
    try:
        platform.hosts.register()
        user = platform.accounts.create_user("alice").uuid
        await platform.drives.create(user, {"size": "3G", "encryption:cipher": "none"})
        await platform.drives.create(
            user, {"size": "1G", "encryption:cipher": "none", "tier": "ssd"}
        )
        on = await platform.servers.create(user, {"name": "on", "cpu": "1500", "mem": "512"}, False)
        await platform.servers.create(user, {"name": "off", "cpu": "900", "mem": "128"}, False)
        with platform.engine.begin() as connection:
            server_store.update_server(connection, str(on["server"]), status="active")
            gone = dataclasses.replace(measure_host(config, time.time() - 100), name="hv-gone")
            host_store.register_host(connection, gone)
            never = dataclasses.replace(measure_host(config, 0.0), name="hv-never")
            host_store.register_host(connection, never)
    finally:
        platform.close()


def test_host_list_shows_capacity_use_and_a_silent_host_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OH_HOST_NAME", "hv-here")
    monkeypatch.setenv("OH_HYPERVISOR_DRIVER", "fake")
    monkeypatch.setenv("OH_HOST_MEMORY_RESERVE_MB", "256")
    state = tmp_path / "state"
    asyncio.run(_place_things(state))
    capsys.readouterr()

    assert main(["--state-dir", str(state), "host", "list"]) == 0
    hosts = {item["host"]: item for item in parse_properties_list(capsys.readouterr().out)}

    assert sorted(hosts) == ["hv-gone", "hv-here", "hv-never"]
    here = hosts["hv-here"]
    cores = os.cpu_count() or 1
    assert here["state"] == "online" and int(here["heartbeat:age"]) < 20
    assert (here["cpu:cores"], here["cpu:core_mhz"]) == (str(cores), "2000")
    assert here["cpu"] == str(cores * 2000)
    assert (here["cpu:used"], here["mem:used"]) == ("1500", "512")  # the active server only
    stats = os.statvfs(tmp_path)
    assert here["disk:disk"] == here["disk:ssd"] == str(stats.f_blocks * stats.f_frsize)
    assert (here["disk:disk:used"], here["disk:ssd:used"]) == (str(3 << 30), str(1 << 30))
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    assert int(here["mem"]) == total_kb // 1024 - 256
    gone = hosts["hv-gone"]
    assert gone["state"] == "offline" and 100 <= int(gone["heartbeat:age"]) < 200
    # Recorded but never heard from: no age since 1970.
    assert (hosts["hv-never"]["state"], hosts["hv-never"]["heartbeat:age"]) == ("offline", "never")
    assert (gone["cpu:used"], gone["disk:disk:used"]) == ("0", "0")
