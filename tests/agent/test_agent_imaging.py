"""An agent images between two of its own drives (`/storage/image`, storage/host_imaging.py),
followed by the API node's end (storage/agent_imaging.py), with a real `openhosting-agent`
over mutual TLS on loopback: a copy into an encrypted drive and a gzip of it give exact bytes,
the progress comes while the job runs, a job stopped on the API node's side is stopped (and
ended) on the agent, a bad gzip stream fails as a local job's does; every field of the call
is checked (malformed: 400, nothing run), a drive without its file is 404 and another host's
certificate 403."""

import asyncio
import json
import os
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from openhosting.agent.pki import Bundle, control_context
from openhosting.errors import FailedError
from openhosting.storage.agent_imaging import image_on_agent
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.imaging import ImagingStopped, Tracker
from openhosting.storage.storage_calls import ImageCall
from testbed.agent_process import AgentProcess, Cluster, agent_process
from tests.agent.test_agent_storage import read, storage_of, write

MIB = 1 << 20
T = TypeVar("T")
# Fixed: it is part of a test id, which must be the same in every xdist worker.
SAME = "7d0c4a4e-5b1f-4c55-9e2a-3f1b8d6c0a11"


def offload(work: Callable[[], T], /) -> Awaitable[T]:
    return asyncio.to_thread(work)


def image_line(**fields: object) -> bytes:
    call = {
        "drive": str(uuid.uuid4()), "tier": "disk", "size": MIB,
        "source": str(uuid.uuid4()), "source_tier": "disk", "source_size": MIB,
    }  # fmt: skip
    return json.dumps({**call, **fields}).encode() + b"\n"


def post(agent: AgentProcess, bundle: Bundle, line: bytes) -> tuple[int, dict[str, str]]:
    async def send() -> tuple[int, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.post(
            f"https://{agent.address}/storage/image", data=line,
            ssl=control_context(bundle), server_hostname="hv-a",
        ) as response:  # fmt: skip
            return response.status, await response.json()

    return asyncio.run(send())


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[]\n",
        image_line(drive="../../etc/passwd"),
        image_line(source="/dev/sda"),
        image_line(source=str(uuid.uuid4()).upper()),
        image_line(tier="../run"),
        image_line(source_tier="a/b"),
        image_line(conversion="xz"),
        image_line(conversion=None),
        image_line(size=-1),
        image_line(source_size="1"),
        image_line(max_rate=1.5),
        image_line(master_key="not base64!"),
        image_line(drive=SAME, source=SAME),
        json.dumps({"drive": SAME, "tier": "disk"}).encode() + b"\n",
    ],
)
def test_a_malformed_imaging_call_is_400(
    agent_a: AgentProcess, cluster: Cluster, line: bytes
) -> None:
    status, answer = post(agent_a, cluster.control, line)
    assert status == 400 and answer["kind"] == "usage", answer


def test_an_imaging_call_without_the_files_is_404_and_from_a_host_403(
    agent_a: AgentProcess, cluster: Cluster
) -> None:
    status, answer = post(agent_a, cluster.control, image_line())
    assert status == 404 and answer["kind"] == "missing", answer
    status, answer = post(agent_a, cluster.host("hv-b"), image_line())
    assert status == 403 and "control plane" in answer["error"], answer


def test_an_agent_images_between_its_own_drives_and_stops_with_its_caller(
    agent_a: AgentProcess, cluster: Cluster
) -> None:
    async def scenario() -> None:
        storage = storage_of(agent_a, cluster)
        try:
            src, secret, packed = (str(uuid.uuid4()) for _ in range(3))
            size = 8 * MIB
            await storage.create(src, "disk", size, None)
            key = await storage.create(secret, "disk", size, b"a passphrase")
            await storage.create(packed, "disk", size, None)
            data = os.urandom(MIB)
            await write(storage, src, data, offset=3 * MIB, size=size)
            content = bytes(3 * MIB) + data + bytes(4 * MIB)

            # A copy into an encrypted drive: the agent decrypts and encrypts with the keys.
            call = ImageCall(secret, "disk", size, src, "disk", size, master_key=key)
            assert await image_on_agent(storage, call, Tracker(), offload) == MIB  # SRC's data
            assert await read(storage, secret, 0, size, key) == content
            # Its gzip, paced: the progress comes as it runs. Slowly enough (4 s) that the
            # pacing, not the machine's load, sets when the agent's lines come: at 8 MiB/s a
            # loaded machine read and compressed it all before the pace held anything back.
            reports: list[tuple[int, int]] = []
            tracker = Tracker(lambda *report: reports.append(report), interval=0)
            call = ImageCall(packed, "disk", size, secret, "disk", size, "gzip", 2 * MIB,
                             source_key=key)  # fmt: skip
            assert await image_on_agent(storage, call, tracker, offload) == size
            assert any(0 < done < size and total == size for done, total in reports), reports
            packed_bytes = await read(storage, packed, 0, size)
            assert zlib.decompressobj(31).decompress(packed_bytes) == content
            # SRC holding no gzip stream: failed as a local job fails.
            call = ImageCall(secret, "disk", size, src, "disk", size, "gunzip", master_key=key)
            with pytest.raises(GzipStreamError):
                await image_on_agent(storage, call, Tracker(), offload)

            # Stopped on the API node's side: the agent's job is stopped and ends.
            stop = threading.Event()
            tracker = Tracker(lambda done, _total: done and stop.set(), stop=stop, interval=0)
            call = ImageCall(packed, "disk", size, src, "disk", size, "gzip", 2 * MIB)
            started = time.monotonic()
            with pytest.raises(ImagingStopped):
                await image_on_agent(storage, call, tracker, offload)
            assert time.monotonic() - started < 3  # the whole job would take 4 s
            for _ in range(50):  # bounded: 5 s
                if "event=agent_imaging_stopped" in agent_a.log.read_text():
                    break
                await asyncio.sleep(0.1)
            assert f"event=agent_imaging_stopped drive={packed}" in agent_a.log.read_text()
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_an_agent_stopping_ends_its_jobs_at_once_each_failing(
    cluster: Cluster, tmp_path: Path
) -> None:
    async def scenario() -> None:
        with agent_process(tmp_path / "hv-a", cluster.host("hv-a")) as agent:
            storage = storage_of(agent, cluster)
            try:
                src, packed = str(uuid.uuid4()), str(uuid.uuid4())
                await storage.create(src, "disk", 8 * MIB, None)
                await storage.create(packed, "disk", 8 * MIB, None)
                tracker = Tracker(lambda done, _: done and os.kill(agent.pid, signal.SIGTERM))
                call = ImageCall(packed, "disk", 8 * MIB, src, "disk", 8 * MIB, "gzip", 2 * MIB)
                started = time.monotonic()
                with pytest.raises(FailedError, match=r"agent stopped during the job \(host hv-a"):
                    await image_on_agent(storage, call, tracker, offload)
                assert time.monotonic() - started < 3  # the whole job would take 4 s
            finally:
                await storage.close()
            # Not the 60 s aiohttp gives the requests under way.
            assert await asyncio.to_thread(exits_within, agent.pid, 5)

    asyncio.run(scenario())


def exits_within(pid: int, seconds: float) -> bool:
    """Whether process `pid` (a child of this one: a zombie once it exited) ends in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_image_call_round_trips_its_keys(tmp_path: Path) -> None:
    call = ImageCall(str(uuid.uuid4()), "disk", MIB, str(uuid.uuid4()), "ssd", 2 * MIB,
                     "gunzip", 5, master_key=b"k" * 64, source_key=b"s" * 32)  # fmt: skip
    assert ImageCall.decode(call.encode()) == call
