"""A standard drive attached as a cdrom by a server on an agent's host, on the real parts: an
API daemon on PostgreSQL (whose own host holds the standard drives and takes no server) and
one real `openhosting-agent` over QEMU (TCG).

The standard cdrom holds a marker. With hv-a's image cache made impossible (a file where its
directory goes), a start is `503 failed` naming hv-a and leaves nothing (no VM, no run
directory, the server stopped). Then the first start on hv-a copies the standard drive into
hv-a's image cache (`<state_dir>/image-cache`, named by the drive's UUID and generation) and
the guest reads the marker from its cdrom; a second start reuses the copy (the same file, no
second copy in the agent's log). The standard drive removed, the next look at hv-a's files
removes its copy.
"""

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from testbed.build_guest import READY_MARKER, build_tiny_guest
from testbed.serial_console import SerialConsole, wait_for_log
from tests.cluster.test_host_agents import Hosts, wait_for

BOOT_TIMEOUT = 60.0
MARKER = "OH-STANDARD-CDROM-MARKER-42"
CACHE_DIRECTORY = "image-cache"


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    assert shutil.which("qemu-system-x86_64"), "QEMU is not installed (a platform part)"
    # The agents' files looked at every second: the cache's removal is seen at once.
    monkeypatch.setenv("OH_STORAGE_ORPHAN_CHECK_SECONDS", "1")
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


async def read_cdrom(console_socket: Path) -> str:
    console = await SerialConsole.open(console_socket)
    try:
        return await console.run(f"head -c {len(MARKER)} /dev/sr0; echo")
    finally:
        await console.close()


def test_a_server_on_an_agents_host_boots_with_a_standard_cdrom_from_the_hosts_cache(
    hosts: Hosts,
) -> None:
    _daemon, api, log = hosts.api_over_qemu_agents("hv-a")
    cache = hosts.work / "agent-hv-a" / "state" / CACHE_DIRECTORY

    image = build_tiny_guest().read_bytes()
    boot = api.properties(
        "/drives/create", f"name boot\nsize {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{boot}/write", image).status == 204
    assert api.properties(f"/drives/{boot}/info")["host"] == "hv-a"
    iso = hosts.work / "marker.iso"
    iso.write_bytes(MARKER.encode().ljust(1 << 20, b"\0"))
    hosts.admin("standard", "add", str(iso), "--name", "marker", "--media", "cdrom")
    (standard,) = api.call("/drives/list/standard").body.decode().split()
    assert api.properties(f"/drives/{standard}/info")["host"] == "zz-api"

    body = (
        f"name n\ncpu 1000\nmem 128\npersistent true\nide:0:0 {boot}\nide:0:1 {standard}\n"
        "ide:0:1:media cdrom\nboot ide:0:0\n"
    )
    server = api.properties("/servers/create/stopped", body.encode())["server"]
    run_a = hosts.run_dirs["hv-a"]
    agent_log = hosts.agents["hv-a"].log
    copied = f"event=agent_standard_cached drive={standard}"

    # The copy cannot be made (a file where hv-a's cache goes): 503 naming hv-a, nothing left.
    cache.write_bytes(b"")
    refused = api.call(f"/servers/{server}/start", b"")
    assert (refused.status, refused.headers.get("X-Elastic-Error")) == (503, "failed"), refused
    assert "hv-a" in refused.body.decode(), refused
    assert hosts.held("hv-a") == [] and not list(run_a.iterdir())
    assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
    cache.unlink()

    started = api.call(f"/servers/{server}/start", b"")
    assert started.status == 204, (started, log.read_text()[-3000:])
    try:
        assert hosts.held("hv-a") == [server]
        (copy,) = cache.iterdir()
        assert copy.name.startswith(f"{standard}-") and copy.name.endswith(".img")
        assert copy.read_bytes() == iso.read_bytes()
        first = copy.stat()
        asyncio.run(wait_for_log(run_a / server / "serial.log", READY_MARKER, timeout=BOOT_TIMEOUT))
        assert asyncio.run(read_cdrom(run_a / server / "console.sock")) == MARKER
    finally:
        stopped = api.call(f"/servers/{server}/stop", b"")
    assert stopped.status == 204, stopped
    assert agent_log.read_text().count(copied) == 1

    # A second start on hv-a reuses the copy: the same file, no second copy.
    again = api.call(f"/servers/{server}/start", b"")
    assert again.status == 204, (again, log.read_text()[-3000:])
    assert api.call(f"/servers/{server}/destroy", b"").status == 204
    assert [entry.name for entry in cache.iterdir()] == [copy.name]
    assert (copy.stat().st_ino, copy.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert agent_log.read_text().count(copied) == 1

    # The standard drive removed: the next look at hv-a's files removes its copy.
    hosts.admin("standard", "remove", standard)
    wait_for(lambda: not copy.exists(), "the removed standard drive's copy removed", log)
    # Its log line follows the unlink: waited for, not read at once.
    removed_line = f"event=agent_standard_copy_removed drive={standard}"
    wait_for(lambda: removed_line in agent_log.read_text(), "the copy's removal logged", log)
