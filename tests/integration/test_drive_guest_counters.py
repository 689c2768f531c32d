"""A drive's I/O counters count what servers' guests read and wrote on it (issue 18, item 5),
on a real TCG guest typing `dd` on a data drive: every byte once, across a server restart and
a daemon restart (the next daemon adopts the VM whose QEMU kept counting), up to the last write
of a guest that powers itself off."""

from pathlib import Path

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from testbed.serial_console import SerialConsole
from tests.api.drive_helpers import create_drive, drive_info
from tests.integration.server_helpers import (
    create_server,
    server_info,
    upload_guest,
    wait_ready,
    wait_status,
)

MIB = 1 << 20
# The data drive, on a bus of its own: /dev/vda in the guest, which mounts nothing on it (two
# IDE disks may come up as sda and sdb in either order).
SLOT = "block:0"
COUNTERS = ("read:bytes", "read:requests", "write:bytes", "write:requests")


async def guest_runs(platform: Platform, server: str, *commands: str) -> None:
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        for command in commands:
            # busybox dd prints its summary on stderr; a failing dd would print no "out".
            output = await console.run(f"{command} 2>&1", timeout=60)
            assert "records out" in output, output
    finally:
        await console.close()


async def drive_counters(client: TestClient, auth: dict[str, str], drive: str) -> list[int]:
    info = await drive_info(client, auth, drive)
    return [int(info[key]) for key in COUNTERS]


async def slot_counters(client: TestClient, auth: dict[str, str], server: str) -> list[int]:
    """What the server's QEMU counted on the data drive since it started."""
    info = await server_info(client, auth, server)
    return [int(info[f"{SLOT}:{key}"]) for key in COUNTERS]


async def stop(client: TestClient, auth: dict[str, str], server: str) -> None:
    assert (await client.post(f"/servers/{server}/stop", headers=auth)).status == 204
    await wait_status(client, auth, server, "stopped")


async def test_drive_counters_grow_by_what_the_guest_moved_once_across_restarts(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    boot = await upload_guest(client, auth, tiny_guest_image)
    data = (await create_drive(client, auth, 16 * MIB, "none"))["drive"]
    assert await drive_counters(client, auth, data) == [0, 0, 0, 0]
    body = (
        f"name io\ncpu 2000\nmem 128\npersistent true\nide:0:0 {boot}\n{SLOT} {data}\n"
        "boot ide:0:0\n"
    )
    server = (await create_server(client, auth, body))["server"]
    await wait_ready(platform, server)

    # Direct I/O: every byte reaches the drive, none stays in the guest's page cache.
    await guest_runs(
        platform, server,
        "dd if=/dev/vda of=/dev/null bs=1M count=4 iflag=direct",
        "dd if=/dev/zero of=/dev/vda bs=64k count=16 seek=64 oflag=direct",
    )  # fmt: skip
    first_run = await slot_counters(client, auth, server)
    assert first_run[0] >= 4 * MIB and first_run[2] >= MIB and first_run[3] >= 16
    # While the server runs, a fold (the daemon's periodic one) brings it to the drive.
    await platform.servers.lifecycle.fold_guest_io()
    assert await drive_counters(client, auth, data) == first_run
    # A stop folds what is left, and only that: the guest moved nothing more.
    await stop(client, auth, server)
    assert await drive_counters(client, auth, data) == first_run

    # A server restart: a new QEMU counts from 0 again; its I/O adds to the drive's.
    assert (await client.post(f"/servers/{server}/start", headers=auth)).status == 204
    await wait_ready(platform, server)
    await guest_runs(platform, server, "dd if=/dev/vda of=/dev/null bs=1M count=2 iflag=direct")
    # A daemon restart: the daemon stopping folds, the next one adopts the VM (whose QEMU
    # kept counting since its start) and goes on from that fold, not from 0.
    lifecycle = platform.servers.lifecycle
    await lifecycle.close()
    await lifecycle.recover()
    assert server in lifecycle.active
    await guest_runs(
        platform, server, "dd if=/dev/zero of=/dev/vda bs=64k count=8 seek=64 oflag=direct"
    )
    second_run = await slot_counters(client, auth, server)
    assert second_run[0] >= 2 * MIB and second_run[2] >= MIB // 2
    # The guest writes once more and powers itself off at once, long before the next
    # periodic fold: QEMU pauses instead of exiting, and its last counters are folded.
    console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
    try:
        await console.send(
            "dd if=/dev/zero of=/dev/vda bs=64k count=16 seek=64 oflag=direct; poweroff -f"
        )
    finally:
        await console.close()
    assert await wait_status(client, auth, server, "stopped", timeout=60) is not None
    total = await drive_counters(client, auth, data)
    assert total[2] >= first_run[2] + second_run[2] + MIB  # the last dd's 1 MiB counted
    assert total[0] == first_run[0] + second_run[0]  # reads: nothing more, nothing twice
    assert (await client.post(f"/servers/{server}/destroy", headers=auth)).status == 204
