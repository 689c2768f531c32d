"""Servers through the API on real QEMU (TCG) booting the tiny guest (docs/api.md §5)."""

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.hypervisor.cpu_quota import read_cpu_quota
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.build_guest import POWEROFF_MARKER
from testbed.serial_console import SerialConsole, read_serial_log
from tests.api.drive_helpers import drive_info
from tests.integration.server_helpers import (
    create_server,
    qemu_driver,
    serial_log,
    server_info,
    upload_guest,
    wait_booted,
    wait_ready,
    wait_status,
)


async def test_case_11_seed_body_boots_and_stop_destroys_a_non_persistent_server(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image)
    body = (
        "name TestServer\ncpu 2000\nmem 256\n"
        f"ide:0:0 {drive}\nboot ide:0:0\nnic:0:model e1000\nnic:0:dhcp auto\n"
        "vnc:ip auto\nvnc:password XXXXXXXX\n"
    )
    response = await client.post(
        "/servers/create", data=body, headers={**auth, "Content-Type": "application/octet-stream"}
    )
    assert response.status == 200, await response.text()
    assert response.headers["X-Elastic-Output"] == "properties"
    info = parse_properties(await response.text())
    server = info["server"]
    assert (info["status"], info["smp"], info["rx"], info["tx"]) == ("active", "1", "0", "0")
    assert info["nic:0:dhcp"] == info["nic:0:dhcp:ip"] == "10.0.2.15"
    assert info["vnc:ip"] == "127.0.0.1"
    assert info["vnc:password"] == info["password"] == "XXXXXXXX"
    claimed = (await drive_info(client, auth, drive))["claimed"]
    assert claimed.endswith(f":guest:{server}:ide:0:0")

    await wait_booted(platform, server)
    info = await server_info(client, auth, server)
    assert int(info["ide:0:0:read:bytes"]) > 0 and int(info["ide:0:0:read:requests"]) > 0
    argv = (platform.servers.run_dir(server) / "qemu.argv").read_text()
    assert "XXXXXXXX" not in argv  # the VNC password goes over QMP only

    stop = await client.post(f"/servers/{server}/stop", headers=auth)
    assert stop.status == 204
    assert await wait_status(client, auth, server, "stopped") is None  # destroyed
    assert "claimed" not in await drive_info(client, auth, drive)


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
async def test_two_servers_run_at_once_on_a_shared_drive(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None, cipher: str,
) -> None:  # fmt: skip
    """`claim:type shared` lets several servers attach one drive: QEMU's image locking must be
    told so (share-rw), or the second QEMU refuses to start."""
    drive = await upload_guest(client, auth, tiny_guest_image, cipher=cipher)
    shared = await client.post(f"/drives/{drive}/set", data="claim:type shared", headers=auth)
    assert shared.status == 200, await shared.text()
    servers = [
        (await create_server(client, auth, f"name s{n}\ncpu 2000\nmem 128\nide:0:0 {drive}"))[
            "server"
        ]
        for n in range(2)
    ]
    for server in servers:
        assert (await server_info(client, auth, server))["status"] == "active"
    for server in servers:
        await wait_ready(platform, server)  # both guests booted from it
    claimed = (await drive_info(client, auth, drive))["claimed"].split()
    assert len(claimed) == 2
    for server in servers:
        assert (await client.post(f"/servers/{server}/destroy", headers=auth)).status == 204


async def test_persistent_server_start_reset_shutdown_and_busy_drive(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image, cipher="aes-xts-plain")
    body = (
        f"name persistent\ncpu 2000\nsmp auto\nmem 256\npersistent true\nblock:0 {drive}\n"
        "boot block:0\nnic:0:model virtio\nnic:0:dhcp auto\npassword XXXXXXXX\nvnc:ip auto\n"
    )
    info = await create_server(client, auth, body, stopped=True)
    server = info["server"]
    assert (info["status"], info["password"], info["smp:cores"]) == ("stopped", "XXXXXXXX", "1")
    assert (await client.post(f"/servers/{server}/start", headers=auth)).status == 204
    assert (await server_info(client, auth, server))["status"] == "active"
    await wait_ready(platform, server)  # an encrypted drive boots

    # The drive is claimed exclusively: a second server cannot start on it (compat 33).
    other = await create_server(
        client, auth, f"name b\ncpu 500\nmem 64\nide:0:0 {drive}\npersistent true", stopped=True
    )
    busy = await client.post(f"/servers/{other['server']}/start", headers=auth)
    assert busy.status == 409 and busy.headers["X-Elastic-Error"] == "busy"

    # Reset first: the guest boots again at a whole core, before the live set below caps
    # it at a quarter of one.
    assert (await client.post(f"/servers/{server}/reset", headers=auth)).status == 204
    await wait_ready(platform, server, count=2)

    # Live set: name and cpu change (cpu as a CPU quota), mem cannot.
    changed = await client.post(
        f"/servers/{server}/set", data="name renamed\ncpu 500", headers=auth
    )
    assert changed.status == 200
    assert parse_properties(await changed.text())["name"] == "renamed"
    if (cgroup := qemu_driver(platform).cgroup) is not None:
        assert read_cpu_quota(cgroup, server) == 25_000
    refused = await client.post(f"/servers/{server}/set", data="mem 512", headers=auth)
    assert refused.status == 409
    # nic:0:block is live too (user mode: nothing inbound reaches the guest anyway).
    blocked = await client.post(f"/servers/{server}/set", data="nic:0:block tcp/22", headers=auth)
    assert blocked.status == 200
    assert parse_properties(await blocked.text())["nic:0:block"] == "tcp/22"
    wrong = await client.post(f"/servers/{server}/set", data="nic:0:block tcp/0", headers=auth)
    assert wrong.status == 400 and "nic:0:block" in await wrong.text()

    assert (await client.post(f"/servers/{server}/shutdown", headers=auth)).status == 204
    info = await wait_status(client, auth, server, "stopped", timeout=30)
    assert info is not None and "started" not in info
    assert POWEROFF_MARKER in read_serial_log(serial_log(platform, server))
    assert "claimed" not in await drive_info(client, auth, drive)
    # Once stopped, the other server may have the drive.
    assert (await client.post(f"/servers/{other['server']}/destroy", headers=auth)).status == 204
    assert (await client.post(f"/servers/{server}/destroy", headers=auth)).status == 204
    assert (await client.get(f"/servers/{server}/info", headers=auth)).status == 404


async def test_guest_powering_itself_off_stops_the_server(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image)
    body = f"name p\ncpu 2000\nmem 128\npersistent true\nscsi:0:0 {drive}\nboot scsi:0:0"
    server = (await create_server(client, auth, body))["server"]
    await wait_ready(platform, server)
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        assert await console.run("echo alive") == "alive"
        await console.send("poweroff -f")
        info = await wait_status(client, auth, server, "stopped", timeout=30)
    finally:
        await console.close()
    assert info is not None


async def test_json_create_with_aliases_and_info_numbers(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image)
    body = {
        "name": "json", "cpu": 2000, "mem": 256, "ide:0:0": drive, "boot": "ide:0:0",
        "smp": "auto", "nic:0:model": "e1000", "nic:0:dhcp": "auto", "vnc": "auto",
        "vnc:password": "pw",
    }  # fmt: skip
    headers = {**auth, "Content-Type": "application/json", "Accept": "application/json"}
    response = await client.post("/servers/create", data=json.dumps(body), headers=headers)
    assert response.status == 200, await response.text()
    document = await response.json()
    assert (document["cpu"], document["mem"], document["status"]) == (2000, 256, "active")
    assert document["vnc:ip"] == document["vnc"] == "127.0.0.1"
    assert isinstance(document["started"], int)
    listing = await client.get("/servers/info", headers=headers)
    [entry] = await listing.json()
    assert entry["nic:0:dhcp:ip"] == "10.0.2.15" and entry["ide:0:0"] == drive
    for command in ("reset", "destroy"):
        done = await client.post(
            f"/servers/{document['server']}/{command}",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert done.status == 204
    await asyncio.sleep(0)
    assert (await client.get("/servers/list", headers=auth)).status == 200


async def test_a_start_failing_after_qemu_started_leaves_no_vm_behind(
    client: TestClient, auth: dict[str, str], platform: Platform,
    monkeypatch: pytest.MonkeyPatch, servers_cleanup: None,
) -> None:  # fmt: skip
    from openhosting.hypervisor.errors import HypervisorError
    from openhosting.hypervisor.vm import RunningVm

    started: list[RunningVm] = []
    real_start = RunningVm.start

    async def start_and_remember(*args, **kwargs):  # type: ignore[no-untyped-def]
        vm = await real_start(*args, **kwargs)
        started.append(vm)
        return vm

    async def refuse(self: RunningVm, password: str | None) -> None:
        raise HypervisorError("QMP set_password failed: simulated")

    monkeypatch.setattr(RunningVm, "start", start_and_remember)
    monkeypatch.setattr(RunningVm, "set_vnc_password", refuse)
    body = "name v\ncpu 500\nmem 64\npersistent true\nvnc:password pw"
    server = (await create_server(client, auth, body, stopped=True))["server"]
    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert response.status == 500 and response.headers["X-Elastic-Error"] == "failed"
    [vm] = started
    assert vm.exited.is_set()
    assert (
        not Path(f"/proc/{vm.pid}").exists()
        or b"guest=" not in Path(f"/proc/{vm.pid}/cmdline").read_bytes()
    )
    assert (await server_info(client, auth, server))["status"] == "stopped"


def host_memory_mb() -> int:
    """What the kernel could lend one process at most: RAM and swap (MemTotal + SwapTotal)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) + int(fields["SwapTotal"].split()[0])) // 1024


async def test_a_server_with_more_memory_than_the_host_has_is_507_full_not_a_failure(
    client: TestClient, auth: dict[str, str], servers_cleanup: None
) -> None:
    # With one host nothing refuses a mem the host cannot hold before QEMU does ("cannot set
    # up guest memory 'pc.ram': Cannot allocate memory"), which was a 500 `failed`.
    mem = 262144  # the largest mem a server may have (docs/api.md §5)
    if host_memory_mb() * 2 >= mem:
        pytest.skip(f"this host's {host_memory_mb()} MB would lend QEMU {mem} MB")
    body = f"name big\ncpu 1000\nmem {mem}\npersistent true"
    server = (await create_server(client, auth, body, stopped=True))["server"]
    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (507, "full")
    assert f"{mem} MB of memory" in await response.text()
    assert (await server_info(client, auth, server))["status"] == "stopped"
    # A create that starts it leaves nothing behind either.
    created = await client.post("/servers/create", data=body, headers=auth)
    assert (created.status, created.headers["X-Elastic-Error"]) == (507, "full")
    assert len((await (await client.get("/servers/list", headers=auth)).text()).splitlines()) == 1
