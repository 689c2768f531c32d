"""The NICs of a server on an agent's host are made on that host: a real `openhosting-agent`
runs bridge-mode networking in a network namespace this test creates (its host's network),
and the control plane (a platform on SQLite, the real agent connector over mutual TLS)
starts a server there. Its tap is on that namespace's public bridge, its DHCP entry in that
agent's dnsmasq with the pool's address, its `nic:0:block` in that namespace's nftables;
the stop removes them. The agent's VMs are the fake's: no guest is needed for the links."""

import subprocess
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import update

from openhosting.agent.pki import control_context
from openhosting.hypervisor.agent_connector import agent_connector
from openhosting.services.platform import Platform
from openhosting.services.servers.server_network import default_mac
from openhosting.store.tables import drives
from testbed.agent_process import agent_process, make_cluster
from tests.integration.netns_helpers import link_names, network_namespace, processes_in
from tests.services.fake_platform import REMOTE_CAPACITY, fake_platform

SERVER_UUID = "0f962616-2071-4173-be79-7dd084271edf"
SERVER = {
    "name": "s", "cpu": "500", "mem": "64", "persistent": "true",
    "nic:0:model": "virtio", "nic:0:dhcp": "auto", "nic:0:block": "tcp/2525",
}  # fmt: skip


def in_namespace(namespace: str, *command: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip


def taps_on_public_bridge(namespace: str) -> list[str]:
    listed = subprocess.run(
        ["ip", "-n", namespace, "-o", "link", "show", "master", "oh-public"],
        check=False, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()]


def dhcp_entries(run: Path) -> str:
    return "".join(p.read_text() for p in run.rglob("hosts/*") if p.is_file())


async def test_a_servers_nics_are_made_on_its_agents_host(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path / "cluster")
    with network_namespace() as namespace:
        env = {"OH_NETWORK_MODE": "bridge", "OH_NETWORK_NAMESPACE": namespace}
        agent_dir = tmp_path / "hv-a"
        with (
            agent_process(agent_dir, cluster.host("hv-a"), env=env) as agent,
            fake_platform(tmp_path / "control") as (platform, _local),
        ):
            platform.hosts.register()
            platform.hosts.set_agent("hv-a", agent.address)
            platform.hosts.heartbeat({"hv-a": REMOTE_CAPACITY})
            platform.servers.lifecycle.drivers.connector = agent_connector(cluster.state)
            await platform.servers.recover()
            try:
                await _start_block_and_stop(platform, namespace, agent_dir / "run")
            finally:
                await platform.servers.close()


async def _start_block_and_stop(platform: Platform, namespace: str, run: Path) -> None:
    user = platform.accounts.create_user().uuid
    drive = str((await platform.drives.create(user, {"name": "d", "size": "1M"}))["drive"])
    with platform.engine.begin() as connection:
        connection.execute(update(drives).where(drives.c.uuid == drive).values(host="hv-a"))
    # The control plane's 5-second watch sets up nothing where no NIC is.
    await platform.servers.networks.refresh_vxlan_peers()
    assert link_names(namespace) == {"lo"}

    created = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=True)
    server = str(created["server"])
    info = await platform.servers.info(user, server)
    assert info["host"] == "hv-a" and platform.servers.lifecycle.driver.held() == []
    address = str(info["nic:0:dhcp:ip"])
    assert address.startswith("192.0.2.")  # the one pool's, in the database
    assert len(taps_on_public_bridge(namespace)) == 1  # on that host's bridge
    entries = dhcp_entries(run)
    assert address in entries and default_mac(server, 0) in entries
    assert any(  # that host's dnsmasq, in its namespace
        "dnsmasq" in Path(f"/proc/{pid}/comm").read_text() for pid in processes_in(namespace)
    )
    assert "2525" in in_namespace(namespace, "nft", "list", "ruleset")

    await platform.servers.set_config(user, server, {"nic:0:block": "tcp/2626"})
    rules = in_namespace(namespace, "nft", "list", "ruleset")
    assert "2626" in rules and "2525" not in rules

    await platform.servers.stop(user, server)
    assert taps_on_public_bridge(namespace) == []
    assert address not in dhcp_entries(run)


@pytest.mark.parametrize(
    ("method", "line"),
    [
        (
            "attach",
            b'{"nics": [{"type": "NicPlan", "server": "../etc", "index": 0,'
            b' "mac": "52:54:00:00:00:01"}]}\n',
        ),
        (
            "attach",
            b'{"nics": [{"type": "NicPlan", "server": "'
            + SERVER_UUID.encode()
            + b'", "index": 0, "mac": "52:54:00:00:00:01; drop"}]}\n',
        ),
        (
            "set_vxlan_peers",
            b'{"peers": {"' + SERVER_UUID.encode() + b'": ["10.0.0.1 dev lo"]}}\n',
        ),
        ("set_vxlan_peers", b'{"peers": {"oh-v; rm": ["10.0.0.1"]}}\n'),
        (
            "set_vxlan_macs",
            b'{"macs": {"'
            + SERVER_UUID.encode()
            + b'": {"52:54:00:00:00:01 dev lo": "10.0.0.1"}}}\n',
        ),
        (
            "set_vxlan_macs",
            b'{"macs": {"'
            + SERVER_UUID.encode()
            + b'": {"52:54:00:00:00:01": "10.0.0.1 self"}}}\n',
        ),
        ("open_vnc", b'{"guest": "not an address", "port": 5900}\n'),
        ("detach", b"not json\n"),
    ],
)
async def test_a_malformed_network_call_is_400_and_touches_nothing(
    tmp_path: Path, method: str, line: bytes
) -> None:
    cluster = make_cluster(tmp_path / "cluster")
    with agent_process(tmp_path / "hv-a", cluster.host("hv-a")) as agent:
        async with aiohttp.ClientSession() as session, session.post(
            f"https://{agent.address}/network/{method}", data=line,
            ssl=control_context(cluster.control), server_hostname="hv-a",
        ) as response:  # fmt: skip
            assert response.status == 400, await response.text()
