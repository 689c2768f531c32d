"""Servers through the API on real QEMU: what the guest sees (boot order, cdrom), a VM
killed from outside, and the server compat cases of libcloud and jclouds (docs/api.md §9: 13,
17-19, 22-25) on VMs that need not boot (their drive holds nothing bootable)."""

import json
import os
import signal
import subprocess
from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.build_guest import PARTITION_START_SECTOR, SYSLINUX_CFG
from testbed.serial_console import SerialConsole
from tests.api.drive_helpers import create_drive, drive_info
from tests.integration.server_helpers import (
    create_server,
    server_info,
    upload_guest,
    wait_ready,
    wait_status,
)

JSON = {"Content-Type": "application/json", "Accept": "application/json"}
CDROM_MARKER = b"OH-CDROM-CONTENT"


def guest_with_kernel_argument(image: Path, copy: Path, argument: str) -> Path:
    """A copy of the tiny guest whose syslinux passes `argument` to the kernel, so the guest
    can tell (from /proc/cmdline) that it booted from this disk."""
    copy.write_bytes(image.read_bytes())
    config = copy.with_name("syslinux.cfg")
    config.write_text(SYSLINUX_CFG.replace("panic=-1", f"panic=-1 {argument}"))
    offset = PARTITION_START_SECTOR * 512  # the FAT partition inside the disk
    subprocess.run(
        ["mcopy", "-o", "-i", f"{copy}@@{offset}", str(config), "::syslinux.cfg"],
        capture_output=True, timeout=30, check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )  # fmt: skip
    return copy


async def post(
    client: TestClient, path: str, auth: dict[str, str], body: str | bytes = "", **headers: str
) -> tuple[int, str]:
    response = await client.post(path, data=body, headers={**auth, **headers})
    return response.status, await response.text()


async def test_guest_boots_from_the_first_boot_slot_sees_its_cdrom_and_survives_a_kill(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None, tmp_path: Path,
) -> None:  # fmt: skip
    first = await upload_guest(client, auth, tiny_guest_image)
    marked = guest_with_kernel_argument(tiny_guest_image, tmp_path / "b.raw", "ohdisk=second")
    second = await upload_guest(client, auth, marked)
    cdrom = (await create_drive(client, auth, 1024 * 1024))["drive"]
    written = await post(client, f"/drives/{cdrom}/write", auth, CDROM_MARKER)
    assert written[0] == 204
    body = (
        f"name order\ncpu 2000\nmem 256\npersistent true\nide:0:0 {first}\nide:0:1 {second}\n"
        f"ide:1:0 {cdrom}\nide:1:0:media cdrom\nboot ide:0:1 ide:0:0"
    )
    server = (await create_server(client, auth, body))["server"]
    await wait_ready(platform, server)

    # Without `boot`, the BIOS would take ide:0:0, whose kernel has no `ohdisk` argument.
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        assert "ohdisk=second" in await console.run("cat /proc/cmdline")
        assert "sr0" in (await console.run("ls /sys/block")).split()
        # The command line echoed back does not hold the marker: only the data can.
        assert CDROM_MARKER.decode() in await console.run("head -c 16 /dev/sr0; echo")
    finally:
        await console.close()
    info = await server_info(client, auth, server)
    # The kernel and initramfs came from the boot disk; the other one only had its
    # partition table read by the guest's kernel.
    assert int(info["ide:0:1:read:bytes"]) > 4 * int(info["ide:0:0:read:bytes"])
    assert int(info["ide:1:0:read:bytes"]) > 0

    # QEMU killed from outside: a persistent server is `dead`, its drives released.
    pid = int((platform.servers.run_dir(server) / "qemu.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    dead = await wait_status(client, auth, server, "dead")
    assert dead is not None and "started" not in dead
    assert "claimed" not in await drive_info(client, auth, second)
    # It starts again (compat 24), and `stop` leaves a persistent server `stopped`.
    assert (await post(client, f"/servers/{server}/start", auth))[0] == 204
    assert (await server_info(client, auth, server))["status"] == "active"
    assert (await post(client, f"/servers/{server}/stop", auth))[0] == 204
    stopped = await wait_status(client, auth, server, "stopped")
    assert stopped is not None and "claimed" not in await drive_info(client, auth, first)


async def test_server_compat_cases_of_libcloud_and_jclouds(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    jclouds_drive = (await create_drive(client, auth, 1024 * 1024))["drive"]
    libcloud_drive = (await create_drive(client, auth, 1024 * 1024))["drive"]

    # 23: jclouds creates stopped, text without a trailing newline; `password` is echoed.
    body = (
        f"name jc\ncpu 1000\nmem 64\nsmp auto\nide:0:0 {jclouds_drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\npassword XXXXXXXX\nvnc:ip auto\npersistent false\n"
        "ide:0:0:media disk"
    )
    status, text = await post(client, "/servers/create/stopped", auth, body)
    assert status == 200, text
    jclouds = parse_properties(text)
    assert (jclouds["status"], jclouds["password"]) == ("stopped", "XXXXXXXX")

    # 17: libcloud's JSON create; the `vnc` alias is honoured.
    document = {
        "name": "lc", "cpu": 2000, "mem": 1700, "ide:0:0": libcloud_drive, "boot": "ide:0:0",
        "smp": "auto", "nic:0:model": "e1000", "nic:0:dhcp": "auto", "vnc": "auto",
        "vnc:password": "pw",
    }  # fmt: skip
    status, text = await post(client, "/servers/create", auth, json.dumps(document), **JSON)
    assert status == 200, text
    libcloud = json.loads(text)
    assert (libcloud["cpu"], libcloud["mem"], libcloud["boot"]) == (2000, 1700, "ide:0:0")
    assert (libcloud["ide:0:0"], libcloud["status"]) == (libcloud_drive, "active")
    assert libcloud["vnc:ip"] == "127.0.0.1"

    # 13: libcloud lists servers with an empty JSON-typed GET: an array of objects.
    response = await client.get("/servers/info", headers={**auth, **JSON})
    assert response.status == 200
    listed = {entry["server"]: entry for entry in await response.json()}
    assert set(listed) == {jclouds["server"], libcloud["server"]}
    for entry in listed.values():
        assert {"server", "name", "cpu", "mem", "boot", "ide:0:0", "status"} <= set(entry)
    assert listed[libcloud["server"]]["nic:0:dhcp:ip"] == "10.0.2.15"
    assert "nic:0:dhcp:ip" not in listed[jclouds["server"]]  # stopped: holds no address

    # 22: jclouds reads text objects separated by exactly one blank line.
    response = await client.get("/servers/info", headers={**auth, "Accept": "text/plain"})
    text = await response.text()
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) == 2 and all(block.strip() for block in blocks)
    for block in blocks:
        properties = parse_properties(block)
        assert properties["cpu"].isdigit() and properties["mem"].isdigit()
        assert properties["smp"] == "auto" or properties["smp"].isdigit()

    # 19: libcloud's set answers 200 with the info (not 204), also on an active server.
    changes = json.dumps({"name": "x", "cpu": "2"})
    status, text = await post(client, f"/servers/{libcloud['server']}/set", auth, changes, **JSON)
    assert status == 200 and (json.loads(text)["name"], json.loads(text)["cpu"]) == ("x", 2)

    # 24: jclouds starts its server; info then shows it active.
    status, _ = await post(client, f"/servers/{jclouds['server']}/start", auth)
    assert 200 <= status < 300
    assert (await server_info(client, auth, jclouds["server"]))["status"] == "active"

    # 18: libcloud's actions with an empty JSON-typed body answer exactly 204.
    empty_json = {"Content-Type": "application/json"}
    for path in (
        f"/servers/{libcloud['server']}/reset",
        f"/servers/{libcloud['server']}/shutdown",
        f"/servers/{libcloud['server']}/destroy",
        f"/drives/{libcloud_drive}/destroy",
    ):
        assert (await post(client, path, auth, b"", **empty_json))[0] == 204, path

    # 25: after destroy, info is 404.
    assert (await post(client, f"/servers/{jclouds['server']}/destroy", auth))[0] == 204
    response = await client.get(f"/servers/{jclouds['server']}/info", headers=auth)
    assert response.status == 404 and response.headers["X-Elastic-Error"] == "missing"
