"""One event follower per agent (docs/cluster.md, 'One event follower per agent'): a second
control plane that follows a real agent's events replaces the first, which stops following
for good instead of taking the stream back; the events then reach the second alone, and the
first still makes calls."""

import asyncio
import uuid
from pathlib import Path

import aiohttp

from openhosting.agent.pki import control_context
from openhosting.hypervisor.driver import StartRequest, VmEvent, VmEventKind
from openhosting.hypervisor.remote_driver import RECONNECT_DELAY, RemoteHypervisorDriver
from openhosting.hypervisor.spec import VmSpec
from testbed.agent_process import agent_process, make_cluster


async def test_the_last_control_plane_to_follow_an_agent_hears_its_events_alone(
    tmp_path: Path,
) -> None:
    cluster = make_cluster(tmp_path / "cluster")
    context = control_context(cluster.control)
    heard: dict[str, list[VmEvent]] = {"first": [], "second": []}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        async def record(event: VmEvent) -> None:
            heard[name].append(event)

        return record

    with agent_process(tmp_path / "hv-a", cluster.host("hv-a")) as agent:
        first = RemoteHypervisorDriver("hv-a", agent.address, context)
        second = RemoteHypervisorDriver("hv-a", agent.address, context)
        first.listen(recorder("first"))
        second.listen(recorder("second"))
        await first.connect()
        await second.connect()  # replaces the first's stream
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    server = str(uuid.uuid4())
                    spec = VmSpec(server, 1, 64, first.run_dir(server))
                    await first.start(StartRequest(spec))  # calls still go through
                    async with session.post(
                        f"https://{agent.address}/faults/crash", json={"server": server},
                        ssl=context, server_hostname="hv-a",
                    ) as crashed:  # fmt: skip
                        assert crashed.status == 200, await crashed.text()
                    # Longer than a follower's reconnection delay: the first stays away.
                    await asyncio.sleep(RECONNECT_DELAY * 1.5)
                    last = [(e.server, e.kind) for e in heard["second"]][-1]
                    assert last == (server, VmEventKind.EXITED)
            assert heard["first"] == []
        finally:
            await first.close()
            await second.close()
