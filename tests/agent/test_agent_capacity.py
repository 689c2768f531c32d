"""An agent describes its own host: a real `openhosting-agent` answers the `capacity` call
with what it measured where it runs (its configuration's MHz and memory reserve, its tiers'
file systems), over mutual TLS, as the control plane records it at each heartbeat."""

from pathlib import Path

import pytest

from openhosting.agent.pki import control_context
from openhosting.config import load_config
from openhosting.host_capacity import measure_capacity
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from testbed.agent_process import agent_process, make_cluster


async def test_an_agent_reports_its_hosts_capacity_as_measured_there(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path / "cluster")
    env = {
        "OH_HYPERVISOR_CORE_MHZ": "1234",
        "OH_HOST_MEMORY_RESERVE_MB": "7",
        "OH_STORAGE_TIERS": f"fast={tmp_path / 'fast'}",
    }
    with agent_process(tmp_path / "hv-a", cluster.host("hv-a"), env=env) as agent:
        driver = RemoteHypervisorDriver("hv-a", agent.address, control_context(cluster.control))
        await driver.connect()
        try:
            reported = await driver.capacity()
        finally:
            await driver.close()
    # What the agent's own configuration measures (its state directory, not ours).
    expected = measure_capacity(
        load_config(env=env, overrides={"state_dir": str(tmp_path / "hv-a" / "state")})
    )
    assert reported == expected
    assert reported.core_mhz == 1234
    assert set(reported.disk_bytes_by_tier) == {"disk", "ssd", "fast"}
    assert reported.cores >= 1 and reported.memory_mb > 0


@pytest.mark.parametrize("line", [b"[]\n", b'{"extra": 1}\n', b"not json\n"])
async def test_a_malformed_capacity_call_is_400(tmp_path: Path, line: bytes) -> None:
    import aiohttp

    cluster = make_cluster(tmp_path / "cluster")
    with agent_process(tmp_path / "hv-a", cluster.host("hv-a")) as agent:
        async with aiohttp.ClientSession() as session, session.post(
            f"https://{agent.address}/calls/capacity", data=line,
            ssl=control_context(cluster.control), server_hostname="hv-a",
        ) as response:  # fmt: skip
            assert response.status == 400, await response.text()
