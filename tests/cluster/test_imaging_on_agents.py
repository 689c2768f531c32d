"""Imaging with drives on an agent's host: an API daemon on PostgreSQL and a real
`openhosting-agent` (fake driver, mutual TLS on loopback) for host `hv-a`, the daemon's own
host `zz-api`. A copy from a drive here into one on hv-a (encrypted), back from hv-a into one
here, a gzip of hv-a's drive into a drive here and its gunzip into another drive on hv-a: each
read back byte for byte through the API, the long zero run of a plain drive on hv-a left as a
hole in the agent's file. A job stopped with its daemon half-way is queued again, and the next
daemon does it whole. The agent gone mid-job: the job fails naming the host.
"""

import hashlib
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from testbed.daemon_process import Api, DaemonProcess
from tests.cluster.test_drive_bytes_on_agents import drive_file
from tests.cluster.test_host_agents import Hosts

MIB = 1 << 20
SIZE = 12 * MIB  # its zero run longer than ZERO_RUN (8 MiB), which is left a hole
BIG = 96 * MIB
# Source bytes per second one job may process: a job of SIZE takes 0.4 s, one of BIG 3 s, long
# enough to be stopped half-way.
RATE = 32 * MIB


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str) -> Iterator[Hosts]:
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


def create(api: Api, name: str, cipher: str = "none", avoid: str = "", size: int = SIZE) -> str:
    body = f"name {name}\nsize {size}\nencryption:cipher {cipher}\n"
    if avoid:
        body += f"avoid {avoid}\n"
    return api.properties("/drives/create", body.encode())["drive"]


def image(api: Api, dst: str, src: str, conversion: str = "") -> dict[str, str]:
    """Run one job into `dst` to its end; DST's info then."""
    path = f"/drives/{dst}/image/{src}" + (f"/{conversion}" if conversion else "")
    answer = api.call(path, b"")
    assert answer.status == 204, answer
    return api.wait_properties(f"/drives/{dst}/info", lambda info: "imaging" not in info)


def moving(info: dict[str, str]) -> bool:
    """Whether the job into the drive is under way, past its start."""
    imaging = info.get("imaging", "")
    return imaging.endswith("%") and imaging != "0%"


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_imaging_to_from_and_between_drives_on_an_agents_host(hosts: Hosts) -> None:
    agent = hosts.start_agent("hv-a")
    hosts.admin("host", "set", "hv-a", "--agent", agent.address)
    env = {**hosts.env, "OH_STORAGE_IMAGING_MAX_RATE": str(RATE)}
    daemon = DaemonProcess(hosts.state, hosts.work / "daemon.log", env=env)
    hosts.stack.callback(daemon.stop)
    api = Api(hosts.account, daemon.url)

    # Ties go to the agent's host; `avoid` puts a drive here.
    remote = create(api, "remote", "aes-xts-plain")
    local = create(api, "local", avoid=remote)
    assert api.properties(f"/drives/{remote}/info")["host"] == "hv-a"
    assert api.properties(f"/drives/{local}/info")["host"] == "zz-api"
    # Data at both ends, a long zero run between them.
    head, tail = os.urandom(MIB), os.urandom(MIB)
    content = head + bytes(SIZE - 2 * MIB) + tail
    assert api.call(f"/drives/{local}/write", head).status == 204
    assert api.call(f"/drives/{local}/write/{SIZE - MIB}", tail).status == 204
    # What the destinations held before is gone after (they are emptied first).
    assert api.call(f"/drives/{remote}/write/{4 * MIB}", os.urandom(MIB)).status == 204

    # Here → hv-a (encrypted there).
    assert "imaging:error" not in image(api, remote, local)
    assert api.call(f"/drives/{remote}/read").body == content

    # hv-a → here.
    back = create(api, "back", avoid=remote)
    assert api.properties(f"/drives/{back}/info")["host"] == "zz-api"
    assert "imaging:error" not in image(api, back, remote)
    assert api.call(f"/drives/{back}/read").body == content

    # hv-a gzipped into a drive here, gunzipped from there into a plain drive on hv-a.
    packed = create(api, "packed", avoid=remote)
    assert "imaging:error" not in image(api, packed, remote, "gzip")
    unpacked = create(api, "unpacked")
    assert api.properties(f"/drives/{unpacked}/info")["host"] == "hv-a"
    assert "imaging:error" not in image(api, unpacked, packed, "gunzip")
    assert api.call(f"/drives/{unpacked}/read").body == content
    # The zero run was not sent: a hole in the agent's file.
    assert allocated(drive_file(hosts, "hv-a", unpacked)) < 4 * MIB

    # A job stopped with its daemon half-way is queued again; the next daemon does it whole.
    big = create(api, "big", avoid=remote, size=BIG)
    big_content = head + bytes(BIG - 2 * MIB) + tail
    assert api.call(f"/drives/{big}/write", head).status == 204
    assert api.call(f"/drives/{big}/write/{BIG - MIB}", tail).status == 204
    big_remote = create(api, "big-remote", size=BIG)
    assert api.properties(f"/drives/{big_remote}/info")["host"] == "hv-a"
    assert api.call(f"/drives/{big_remote}/image/{big}", b"").status == 204
    api.wait_properties(f"/drives/{big_remote}/info", moving)
    daemon.stop()
    assert "state queued" in hosts.admin("jobs", "list", "--limit", "1")
    daemon.start()
    assert "imaging:error" not in api.wait_properties(
        f"/drives/{big_remote}/info", lambda info: "imaging" not in info
    )
    hashed = api.properties(f"/drives/{big_remote}/hash")["hash"]  # on the agent
    assert hashed == hashlib.sha256(big_content).hexdigest()

    # The agent gone mid-job: the job fails, naming its host.
    assert api.call(f"/drives/{big_remote}/image/{big}/gzip", b"").status == 204
    api.wait_properties(f"/drives/{big_remote}/info", moving)
    os.kill(agent.pid, signal.SIGKILL)
    info = api.wait_properties(f"/drives/{big_remote}/info", lambda info: "imaging" not in info)
    assert "hv-a" in info["imaging:error"], info
