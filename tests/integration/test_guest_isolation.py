"""A user-mode guest reaches the outside world and nothing of its host (issue 13, item 1).

The whole platform runs inside a network namespace the test makes, which stands for the host:
its API, a server's VNC, a "database" on 127.0.0.1 and a service on the host's own address
all live there, and so do passt and the guest fence. A second namespace, cabled to the first
by a veth, is the outside world, with an HTTP server on a non-loopback address. A real guest
under TCG then tries them all from its shell, the hostile way included: routing 127.0.0.0/8
out of its NIC with `route_localnet`, which passt would otherwise turn into connections to
the host's loopback.
"""

import asyncio
import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from testbed.build_guest import LEASE_MARKER
from testbed.serial_console import SerialConsole, wait_for_matches
from tests.integration.netns_helpers import network_namespace
from tests.integration.server_helpers import (
    create_server,
    serial_log,
    server_info,
    upload_guest,
)

CLONE_NEWNET = 0x40000000
HOST_ADDRESS, OUTSIDE_ADDRESS = "198.18.0.1", "198.18.0.2"  # a benchmarking range (RFC 2544)
OUTSIDE_PORT = 8080
OUTSIDE_URL = f"http://{OUTSIDE_ADDRESS}:{OUTSIDE_PORT}"
TOKEN = "outside-world-reached-7c1f"
BANNER = b"HOST-ONLY-SERVICE\n"
BOOT_TIMEOUT = 120
BULK_BYTES = 32 * 1024


def set_network_namespace(path: str) -> None:
    """Move the calling thread (and the processes and threads it starts) into a namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10)


@pytest.fixture(autouse=True)
def host_and_outside(tmp_path: Path) -> Iterator[None]:
    """The test process in the "host" namespace, cabled to an "outside" one serving TOKEN;
    everything is back as it was afterwards (the platform fixture ends first)."""
    with network_namespace() as host, network_namespace() as outside:
        ip("link", "add", "oh-h", "netns", host, "type", "veth", "peer", "oh-o", "netns", outside)
        ip("-n", host, "addr", "add", f"{HOST_ADDRESS}/24", "dev", "oh-h")
        ip("-n", outside, "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "oh-o")
        ip("-n", host, "link", "set", "oh-h", "up")
        ip("-n", outside, "link", "set", "oh-o", "up")
        # passt takes the interface of the default route as its way out.
        ip("-n", host, "route", "add", "default", "via", OUTSIDE_ADDRESS)
        site = tmp_path / "site"
        site.mkdir()
        (site / "token.txt").write_text(TOKEN + "\n")
        (site / "bulk.txt").write_text("x" * BULK_BYTES)
        server = subprocess.Popen(
            ["ip", "netns", "exec", outside, sys.executable, "-m", "http.server",
             str(OUTSIDE_PORT), "--bind", OUTSIDE_ADDRESS, "--directory", str(site)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            set_network_namespace(f"/run/netns/{host}")
            try:
                yield
            finally:
                set_network_namespace(f"/proc/self/fd/{original}")
        finally:
            os.close(original)
            server.kill()
            server.wait(timeout=10)


class CountingListener:
    """A TCP service that greets with BANNER and counts who got in."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._greet, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.write(BANNER)
        await writer.drain()
        writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


def probe(host: str, port: int | str) -> str:
    """A guest shell command: what a TCP client gets from `host`:`port` (an HTTP request)."""
    return f"printf 'GET /token.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {host} {port} 2>&1; echo rc=$?"


async def probe_all(console: SerialConsole, targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    """What each probe of `targets` (label: host, port) got, the probes run at once in the
    guest: one whose packets are dropped waits its whole `nc -w 4`, and one after the other
    those waits made most of this test's time. The probe is a shell function, so that the
    typed line stays within the guest shell's 1,024 characters."""
    await console.run(f"probe() {{ {probe('$1', '$2')}; }}")
    labels = list(targets)
    started = " ".join(
        f"probe {host} {port} >/tmp/probe{index} 2>&1 &"
        for index, (host, port) in enumerate(targets[label] for label in labels)
    )
    indexes = " ".join(str(index) for index in range(len(labels)))
    shown = f'for i in {indexes}; do echo "==probe$i=="; cat /tmp/probe$i; done'
    output = await console.run(f"{started} wait; {shown}")
    parts = output.split("==probe")[1:]
    assert len(parts) == len(labels), output
    return {label: part.split("==", 1)[1] for label, part in zip(labels, parts, strict=True)}


async def test_a_user_mode_guest_reaches_the_outside_but_nothing_of_its_host(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    database, host_service = CountingListener(), CountingListener()
    database_port = await database.start("127.0.0.1")
    host_service_port = await host_service.start(HOST_ADDRESS)
    api_port = client.server.port
    assert api_port is not None
    try:
        drive = await upload_guest(client, auth, tiny_guest_image)
        server = (await create_server(
            client, auth,
            f"name g\ncpu 2000\nmem 256\nide:0:0 {drive}\nboot ide:0:0\nnic:0:model e1000\n"
            "nic:0:dhcp auto\nvnc:ip auto\nvnc:password XXXXXXXX\n",
        ))["server"]  # fmt: skip
        vnc_port = int((await server_info(client, auth, server)).get("vnc:port", 5900))
        leases = await wait_for_matches(
            serial_log(platform, server), rf"{LEASE_MARKER} \S+ \S+ ([0-9.]+)", timeout=BOOT_TIMEOUT
        )
        # The guest keeps user mode's address.
        assert leases[0].group(1) == "10.0.2.15"
        console = await SerialConsole.open(platform.servers.run_dir(server) / "console.sock")
        try:
            # The outside world is reached, through passt, from the guest's own address, and
            # the NIC's counters count what the guest moved (issue 18, item 5). wget, not nc:
            # nc waits some 16 s after passt's answer before it sees the connection end.
            before = await server_info(client, auth, server)
            fetched = await console.run(f"wget -q -O - {OUTSIDE_URL}/bulk.txt | wc -c")
            received = int(fetched.split()[-1])
            assert received == BULK_BYTES, fetched
            after = await server_info(client, auth, server)
            assert int(after["rx"]) - int(before["rx"]) >= received
            assert int(after["tx"]) - int(before["tx"]) >= len("GET /bulk.txt HTTP/1.1")
            assert int(after["rx:packets"]) > int(before["rx:packets"])
            assert int(after["tx:packets"]) > int(before["tx:packets"])

            # The gateway is not the host's loopback (QEMU's slirp maps 10.0.2.2 to it).
            targets = {
                f"gateway:{port}": ("10.0.2.2", port)
                for port in (api_port, vnc_port, database_port)
            }
            # The host's own address: its services, and those bound to loopback only.
            for port in (host_service_port, database_port, api_port):
                targets[f"host:{port}"] = (HOST_ADDRESS, port)
            # The same probe to the outside, alongside: it does get through.
            targets["outside"] = (OUTSIDE_ADDRESS, OUTSIDE_PORT)
            reached = await probe_all(console, targets)
            outside = reached.pop("outside")
            assert TOKEN in outside and "rc=0" in outside, outside
            # A root guest routes loopback out of its NIC: passt would connect to 127.0.0.1.
            await console.run(
                "sysctl -qw net.ipv4.conf.all.route_localnet=1 "
                "net.ipv4.conf.eth0.route_localnet=1; "
                "ip route add 127.0.0.0/8 via 10.0.2.2 dev eth0"
            )
            assert "dev eth0" in await console.run("ip route get 127.0.0.1")
            reached |= await probe_all(
                console,
                {
                    f"loopback:{port}": ("127.0.0.1", port)
                    for port in (api_port, vnc_port, database_port)
                },
            )
            # The outside still works after all that.
            assert TOKEN in await console.run(f"wget -q -O - {OUTSIDE_URL}/token.txt")
        finally:
            await console.close()
    finally:
        database.close()
        host_service.close()
    for target, output in reached.items():
        assert "rc=" in output, f"the probe of {target} did not end: {output!r}"
        for sign in ("HTTP/", "RFB", BANNER.decode().strip()):
            assert sign not in output, f"the guest reached {target}: {output!r}"
    assert (database.accepted, host_service.accepted) == (0, 0)
