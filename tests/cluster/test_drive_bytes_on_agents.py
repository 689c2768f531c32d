"""Drive bytes on the agents: an API daemon on PostgreSQL and a real `openhosting-agent` (over
the fake driver, mutual TLS on loopback) registered for host `hv-a`. A drive placed on hv-a is
made in the agent's own drive directory, never the daemon's; the API's write (raw and gzip),
read, hash, resize and destroy work on it as on a local drive, plain and encrypted, streamed
through the daemon without holding the bytes (its peak memory barely moves); a server
on hv-a starts with it; a second drive on another host is refused with a message (imaging
across hosts: test_imaging_on_agents.py); the agent gone, its drive's read fails naming the
host (a read under way is cut short) and its status is inactive, until the agent is back.
"""

import gzip
import hashlib
import http.client
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from testbed.daemon_process import Api, DaemonProcess
from tests.cluster.test_host_agents import Hosts

MIB = 1 << 20
# Seconds a client waits without reading: ample for the agent's 96 MiB to reach the daemon
# (a few hundred MB/s on loopback) were nothing holding them back.
STALL_SECONDS = 2.0


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str) -> Iterator[Hosts]:
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


def reset_peak_memory(pid: int) -> None:
    """Start the process's peak resident memory again from what it holds now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_memory(pid: int) -> int:
    """The process's peak resident memory since the last reset (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def drive_file(hosts: Hosts, host: str, drive: str) -> Path:
    return hosts.work / f"agent-{host}" / "state" / "drives" / f"{drive}.img"


def test_drives_on_an_agents_host_keep_their_bytes_there_and_the_api_moves_them(
    hosts: Hosts,
) -> None:
    agent = hosts.start_agent("hv-a")
    hosts.admin("host", "set", "hv-a", "--agent", agent.address)
    daemon = DaemonProcess(hosts.state, hosts.work / "daemon.log", env=hosts.env)
    hosts.stack.callback(daemon.stop)
    api = Api(hosts.account, daemon.url)

    for cipher in ("none", "aes-xts-plain"):
        body = f"name d\nsize 2M\nencryption:cipher {cipher}\n".encode()
        drive = api.properties("/drives/create", body)["drive"]
        assert api.properties(f"/drives/{drive}/info")["host"] == "hv-a"
        path = drive_file(hosts, "hv-a", drive)
        assert path.is_file(), cipher
        assert not (hosts.state / "drives" / f"{drive}.img").exists()

        data = os.urandom(MIB)
        assert api.call(f"/drives/{drive}/write", data).status == 204
        packed = os.urandom(300_000)
        written = api.call(
            f"/drives/{drive}/write/{MIB}", gzip.compress(packed), {"Content-Encoding": "gzip"}
        )
        assert written.status == 204, written
        read = api.call(f"/drives/{drive}/read/0/{MIB + len(packed)}")
        assert read.status == 200 and read.body == data + packed, cipher
        hashed = api.properties(f"/drives/{drive}/hash/0/{MIB}")
        assert hashed["hash"] == hashlib.sha256(data).hexdigest()
        if cipher == "none":
            assert path.read_bytes()[:MIB] == data  # the agent's file holds them
        else:
            assert data[:4096] not in path.read_bytes()
        past_end = api.call(f"/drives/{drive}/write/{2 * MIB - 10}", bytes(20))
        assert (past_end.status, past_end.headers.get("X-Elastic-Error")) == (507, "full")

        assert api.properties(f"/drives/{drive}/set", b"size 3M\n")["size"] == str(3 * MIB)
        assert api.call(f"/drives/{drive}/read/0/{MIB}").body == data  # kept over the resize
        assert api.call(f"/drives/{drive}/destroy", b"").status == 204
        assert not path.exists()

    # Streamed, not held: 96 MiB written and read through the daemon raise its peak memory
    # by far less (a body buffered whole would add all of it).
    big = api.properties("/drives/create", b"name big\nsize 96M\nencryption:cipher none\n")
    piece = os.urandom(MIB)
    reset_peak_memory(daemon.pid)
    before = peak_memory(daemon.pid)
    written = api.call(
        f"/drives/{big['drive']}/write",
        (piece for _ in range(96)),
        {"Content-Length": str(96 * MIB)},
    )
    assert written.status == 204, written
    whole = api.call(f"/drives/{big['drive']}/read").body
    assert len(whole) == 96 * MIB and whole[-MIB:] == piece
    assert peak_memory(daemon.pid) - before < 40 * MIB
    # A client that stops reading: the daemon stops reading the agent (its stream paused), it
    # does not gather the agent's bytes meanwhile.
    reset_peak_memory(daemon.pid)
    before = peak_memory(daemon.pid)
    stalled = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        stalled.request("GET", f"/drives/{big['drive']}/read", headers=hosts.account.headers)
        answer = stalled.getresponse()
        assert answer.status == 200 and len(answer.read(MIB)) == MIB
        time.sleep(STALL_SECONDS)
        assert peak_memory(daemon.pid) - before < 40 * MIB
    finally:
        stalled.close()

    # A server on hv-a starts with its drive there; a second drive of another host is refused.
    # (The big drive, kept for the agent's death below, leaves hv-a the less room: the
    # first drive goes to zz-api, the second kept apart from it.)
    there = api.properties("/drives/create", b"name b\nsize 1M\nencryption:cipher none\n")["drive"]
    here = api.properties(
        "/drives/create", f"name a\nsize 1M\nencryption:cipher none\navoid {there}\n".encode()
    )["drive"]
    assert api.properties(f"/drives/{here}/info")["host"] == "hv-a"
    assert api.properties(f"/drives/{there}/info")["host"] == "zz-api"
    config = f"name s\ncpu 500\nmem 64\nide:0:0 {here}\nboot ide:0:0\n"
    server = api.properties("/servers/create/stopped", config.encode())["server"]
    assert api.call(f"/servers/{server}/start", b"").status == 204
    assert hosts.held("hv-a") == [server]
    assert api.call(f"/servers/{server}/stop", b"").status == 204
    two = api.properties("/servers/create/stopped", f"{config}ide:0:1 {there}\n".encode())["server"]
    refused = api.call(f"/servers/{two}/start", b"")
    assert (refused.status, refused.headers.get("X-Elastic-Error")) == (409, "busy"), refused
    assert "zz-api" in refused.body.decode() and "hv-a" in refused.body.decode()

    # The agent gone mid-read: the client's answer is cut short (its connection closed, not
    # left waiting for the bytes), then a read fails naming the host, and the drive shows
    # inactive.
    cut = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        cut.request("GET", f"/drives/{big['drive']}/read", headers=hosts.account.headers)
        answer = cut.getresponse()
        assert answer.status == 200 and len(answer.read(MIB)) == MIB
        os.kill(agent.pid, signal.SIGKILL)
        with pytest.raises(http.client.IncompleteRead):
            answer.read()
    finally:
        cut.close()
    failed = api.call(f"/drives/{here}/read/0/100")
    assert (failed.status, failed.headers.get("X-Elastic-Error")) == (503, "failed"), failed
    assert "hv-a" in failed.body.decode()
    assert api.properties(f"/drives/{here}/info")["status"] == "inactive"

    # Back on its port: the drive's bytes are there again, and so is its status.
    hosts.start_agent("hv-a", listen=agent.address)
    again = api.call(f"/drives/{here}/read/0/100")
    assert (again.status, again.body) == (200, bytes(100)), again
    assert api.properties(f"/drives/{here}/info")["status"] == "active"
    assert api.call(f"/drives/{big['drive']}/destroy", b"").status == 204
