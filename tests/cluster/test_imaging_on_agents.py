"""Imaging with drives on an agent's host: an API daemon on PostgreSQL and a real
`openhosting-agent` (fake driver, mutual TLS on loopback) for host `hv-a`, the daemon's own
host `zz-api`. A copy from a drive here into one on hv-a (encrypted), back from hv-a into one
here, a gzip of hv-a's drive into a drive here and its gunzip into another drive on hv-a: each
read back byte for byte through the API, the long zero run of a plain drive on hv-a left as a
hole in the agent's file. A job stopped with its daemon half-way is queued again, and the next
daemon does it whole. The agent gone mid-job: the job fails naming the host.

Between two drives of one agent's host (hv1, in a network namespace of its own cabled to the
root's by one veth), the agent runs the job: copy, gzip and gunzip give exact bytes while
less than `CROSSED` goes over the veth (streamed, SRC alone would be 12 MiB); the progress
is recorded as it runs; the agent killed mid-job fails it naming hv1, and once back a later
job works; the API node killed mid-job, the agent stops its job, and the job is done again
once its lease ran out.
"""

import hashlib
import os
import signal
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from openhosting.agent.pki import Bundle, add_host
from openhosting.reverter import Reverter
from testbed.agent_process import AgentProcess, agent_process
from testbed.cluster import AGENT_PORT, Topology, cable
from testbed.daemon_process import Api, DaemonProcess
from tests.cluster.test_drive_bytes_on_agents import drive_file
from tests.cluster.test_host_agents import Hosts

MIB = 1 << 20
SIZE = 12 * MIB  # its zero run longer than ZERO_RUN (8 MiB), which is left a hole
BIG = 96 * MIB
# Source bytes per second one job may process: a job of SIZE takes 0.4 s, one of BIG 3 s, long
# enough to be stopped half-way.
RATE = 32 * MIB
# Bytes between the API node and an agent imaging between its own drives, at most, per job:
# the call, its progress lines, the heartbeats meanwhile.
CROSSED = MIB
LEASE = 2  # seconds: a job of a killed API node is taken over soon after


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


def veth_bytes(name: str) -> int:
    """The bytes a veth of the root namespace sent and received."""
    statistics = Path("/sys/class/net") / name / "statistics"
    return sum(int((statistics / counter).read_text()) for counter in ("rx_bytes", "tx_bytes"))


def wait_for_line(log: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in log.read_text():  # bounded
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def test_an_agent_images_between_its_own_drives_without_the_bytes_crossing(hosts: Hosts) -> None:
    tag = os.getpid() % 100
    topology = Topology(prefix=f"ohim{tag}-", subnet=f"10.245.{tag}", hosts=1)
    undo = Reverter()
    hosts.stack.callback(undo.fail)  # the namespaces go last, after the processes in them
    cable(topology, undo)
    address = f"{topology.address('hv1')}:{AGENT_PORT}"
    add_host(hosts.state, "hv1", hosts.work / "bundle-hv1")
    bundle = Bundle.in_directory(hosts.work / "bundle-hv1", "host")

    def start_agent() -> AgentProcess:
        return hosts.stack.enter_context(
            agent_process(hosts.work / "agent-hv1", bundle, listen=address,
                          netns=topology.namespace("hv1"))
        )  # fmt: skip

    agent = start_agent()
    hosts.admin("host", "set", "hv1", "--agent", address)
    env = {
        **hosts.env,
        "OH_STORAGE_IMAGING_MAX_RATE": str(RATE),
        "OH_STORAGE_IMAGING_LEASE_SECONDS": str(LEASE),
    }
    daemon = DaemonProcess(hosts.state, hosts.work / "daemon.log", env=env)
    hosts.stack.callback(daemon.stop)
    api = Api(hosts.account, daemon.url)

    deadline = time.monotonic() + 20
    while hosts.host_list().get("hv1", {}).get("state") != "online":  # bounded
        assert time.monotonic() < deadline, hosts.host_list()
        time.sleep(0.2)
    # A drive of the API node's own host, which the others avoid: they all go to hv1.
    pin = create(api, "pin", size=MIB)
    if api.properties(f"/drives/{pin}/info")["host"] == "hv1":
        pin = create(api, "pin-here", size=MIB, avoid=pin)
    assert api.properties(f"/drives/{pin}/info")["host"] == "zz-api"
    src, copied, packed, unpacked = (create(api, name, avoid=pin) for name in "scpu")
    secret = create(api, "secret", "aes-xts-plain", avoid=pin)
    for drive in (src, copied, packed, unpacked, secret):
        assert api.properties(f"/drives/{drive}/info")["host"] == "hv1"
    head, tail = os.urandom(MIB), os.urandom(MIB)
    digest = hashlib.sha256(head + bytes(SIZE - 2 * MIB) + tail).hexdigest()
    assert api.call(f"/drives/{src}/write", head).status == 204
    assert api.call(f"/drives/{src}/write/{SIZE - MIB}", tail).status == 204
    assert api.call(f"/drives/{copied}/write/{4 * MIB}", os.urandom(MIB)).status == 204

    def image_there(dst: str, source: str, conversion: str = "") -> None:
        before = veth_bytes(topology.fabric)
        assert "imaging:error" not in image(api, dst, source, conversion)
        crossed = veth_bytes(topology.fabric) - before
        assert crossed < CROSSED, f"{crossed} bytes crossed for {conversion or 'copy'}"

    image_there(copied, src)
    image_there(secret, src)  # encrypted there with its key
    image_there(packed, src, "gzip")
    image_there(unpacked, packed, "gunzip")
    for drive in (copied, secret, unpacked):
        assert api.properties(f"/drives/{drive}/hash")["hash"] == digest  # hashed there
    # Emptied first, the long zero run a hole (the local pipelines, there).
    for drive in (copied, unpacked):
        assert allocated(hosts.work / "agent-hv1" / "state" / "drives" / f"{drive}.img") < 4 * MIB

    # The agent killed mid-job (its progress recorded meanwhile): failed, naming the host.
    big = create(api, "big", size=BIG, avoid=pin)
    assert api.call(f"/drives/{big}/write", head).status == 204
    assert api.call(f"/drives/{packed}/image/{big}/gzip", b"").status == 204
    api.wait_properties(f"/drives/{packed}/info", moving)
    os.kill(agent.pid, signal.SIGKILL)
    info = api.wait_properties(f"/drives/{packed}/info", lambda info: "imaging" not in info)
    assert "hv1" in info["imaging:error"], info
    # Back: a later job works.
    agent = start_agent()
    api.wait_properties(f"/drives/{copied}/info", lambda info: "host:state" not in info)
    image_there(copied, unpacked)
    assert api.properties(f"/drives/{copied}/hash")["hash"] == digest

    # The API node killed mid-job: the agent stops its job; the job is taken over once its
    # lease ran out, and done again whole.
    assert api.call(f"/drives/{packed}/image/{big}/gzip", b"").status == 204
    api.wait_properties(f"/drives/{packed}/info", moving)
    daemon.end(signal.SIGKILL)
    wait_for_line(agent.log, f"event=agent_imaging_stopped drive={packed}")
    daemon.start()
    info = api.wait_properties(f"/drives/{packed}/info", lambda info: "imaging" not in info)
    assert "imaging:error" not in info, info
    assert "reason=lease_expired" in daemon.log.read_text()
    packed_bytes = api.call(f"/drives/{packed}/read").body
    whole = zlib.decompressobj(31).decompress(packed_bytes)
    assert hashlib.sha256(whole).digest() == hashlib.sha256(head + bytes(BIG - MIB)).digest()
