"""The NICs of a server whose VM runs on an agent's host are made by that host's network
driver (services/servers/server_network.py over HostDrivers.networks), and its serial log and VNC
display are that host's; a drain moves its NICs with it. Fast, with a fake agent whose
network records what it is asked; the same over a real agent and a real bridge in a
namespace is tests/agent/test_agent_network.py."""

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from openhosting.errors import UsageError
from openhosting.hypervisor.driver import IncomingInfo, IncomingRequest
from openhosting.hypervisor.errors import HostUnreachableError, HypervisorError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.hypervisor.spec import TapNetdev
from openhosting.model.port_block import BlockedPorts
from openhosting.network.driver import NicPlan
from openhosting.network.links import Counters
from openhosting.services.platform import Platform
from openhosting.store import hosts as host_store
from openhosting.store import resources as resource_store
from openhosting.store.records import HostRecord
from openhosting.store.tables import drives, servers
from tests.services.fake_platform import RecordingNetwork, platform_with_agent_host

SERVER = {
    "name": "s", "cpu": "500", "mem": "64", "persistent": "true",
    "nic:0:model": "virtio", "nic:0:dhcp": "auto", "nic:0:block": "tcp/25",
    "vnc:password": "secret",
}  # fmt: skip

OTHER = "5e000000-0000-4000-8000-0000000000b1"  # a server on hv-b, its rows only
Hosts = tuple[Platform, FakeHypervisor, FakeHypervisor, RecordingNetwork, str]


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Hosts]:
    network = RecordingNetwork(namespace="oh-hv-a", vnc_address="198.51.100.7")
    with platform_with_agent_host(tmp_path, network=network) as (platform, local, remote, user):
        yield platform, local, remote, network, user


async def server_on_agent_host(platform: Platform, user: str, **extra: str) -> str:
    properties = {"name": "d", "size": "1M", "encryption:cipher": "none"}
    drive = str((await platform.drives.create(user, properties))["drive"])
    with platform.engine.begin() as connection:
        connection.execute(update(drives).where(drives.c.uuid == drive).values(host="hv-a"))
    created = await platform.servers.create(user, {**SERVER, "ide:0:0": drive, **extra}, start=True)
    return str(created["server"])


async def test_a_server_on_an_agent_host_gets_its_nics_made_there(two_hosts: Hosts) -> None:
    platform, local, remote, network, user = two_hosts
    await platform.servers.recover()  # connects to the agents
    server = await server_on_agent_host(platform, user)

    # Made there, with the pool's address, the MAC and the blocked ports; nothing here.
    [nic] = network.of(server)
    info = await platform.servers.info(user, server)
    assert nic.address is not None and info["nic:0:dhcp:ip"] == nic.address
    assert nic.mac.startswith("52:54:00:")
    assert nic.block == (BlockedPorts("tcp", 25, 25),)
    assert network.calls[:2] == ["start", "attach"]
    vm = remote.host.vms[server]
    assert [n.backend for n in vm.spec.nics] == [TapNetdev(f"tap-{server[:4]}-0")]
    assert vm.spec.netns == "oh-hv-a"  # QEMU runs in that host's namespace
    assert local.held() == []
    # Its traffic is counted there, and its VNC is reached on its own address there.
    assert info["rx"] == 7
    assert network.overlays == {nic.address: 5900}
    assert info["vnc:ip"] == nic.address

    # nic:0:block changes there at once.
    await platform.servers.set_config(user, server, {"nic:0:block": "udp/53"})
    [nic] = network.of(server)
    assert nic.block == (BlockedPorts("udp", 53, 53),)

    # The stop removes them there and lets go of the address.
    await platform.servers.stop(user, server)
    assert network.of(server) == [] and network.overlays == {}
    assert "nic:0:dhcp:ip" not in await platform.servers.info(user, server)
    await platform.servers.close()


async def test_a_failed_attach_on_the_agent_host_starts_nothing_and_holds_no_address(
    two_hosts: Hosts,
) -> None:
    platform, _local, remote, network, user = two_hosts
    await platform.servers.recover()
    network.fail_attach = True
    with pytest.raises(OSError, match="tap"):
        await server_on_agent_host(platform, user)
    assert remote.held() == [] and network.nics == {}
    with platform.engine.connect() as connection:
        assert resource_store.all_nics(connection) == []
    await platform.servers.close()


async def test_the_agent_hosts_nics_are_reconciled_there_after_a_daemon_restart(
    two_hosts: Hosts,
) -> None:
    platform, _local, _remote, network, user = two_hosts
    await platform.servers.recover()
    server = await server_on_agent_host(platform, user)
    [nic] = network.of(server)
    network.nics.clear()
    network.calls.clear()
    await platform.servers.recover()  # what a restarted daemon does once it adopted
    assert "reconcile" in network.calls and network.of(server) == [nic]
    await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_the_vnc_display_is_free_on_the_vms_host_and_its_log_is_read_there(
    two_hosts: Hosts,
) -> None:
    platform, local, remote, network, user = two_hosts
    await platform.servers.recover()
    listen = platform.config.hypervisor.vnc_listen
    remote.host.ports_in_use.add((listen, 5900))  # display 0 taken there, not here
    server = await server_on_agent_host(platform, user)
    info = await platform.servers.info(user, server)
    # Display 1: its overlay on the guest's address leads to port 5901 there.
    assert network.overlays == {info["nic:0:dhcp:ip"]: 5901}
    remote.print_serial(server, b"hello from hv-a\n")
    assert await asyncio.to_thread(platform.servers.serial_log, server, user) == (
        b"hello from hv-a\n"
    )
    assert local.held() == []
    await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_a_drain_moves_a_servers_nics_to_the_target_host_and_off_the_source(
    two_hosts: Hosts,
) -> None:
    platform, local, remote, network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network  # this host's, recording too
    await platform.servers.recover()
    server = await server_on_agent_host(platform, user)
    [before] = network.of(server)
    started = (await platform.servers.info(user, server))["started"]

    outcome = await platform.servers.drain("hv-a")

    assert outcome[server] == f"moved {platform.hosts.name}", outcome
    assert local.held() == [server] and remote.held() == []
    # The same NIC on the target (its MAC, address and blocked ports), none left on the source.
    assert here_network.of(server) == [before] and network.of(server) == []
    vm = local.host.vms[server]
    assert [(n.mac, n.backend) for n in vm.spec.nics] == [
        (before.mac, TapNetdev(f"tap-{server[:4]}-0"))
    ]
    info = await platform.servers.info(user, server)
    assert (info["nic:0:dhcp:ip"], info["started"], info["host"]) == (
        before.address, started, platform.hosts.name,
    )  # fmt: skip
    # Its VNC overlay left with it.
    assert network.overlays == {} and here_network.overlays == {before.address: 5900}
    # The next stop lets go of it here.
    await platform.servers.stop(user, server)
    assert here_network.of(server) == []
    await platform.servers.close()


async def test_a_move_that_fails_leaves_the_nics_on_the_source_and_none_on_the_target(
    two_hosts: Hosts,
) -> None:
    platform, local, remote, network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network
    await platform.servers.recover()
    server = await server_on_agent_host(platform, user)
    [before] = network.of(server)
    local.fail_next_start()  # the target cannot start the VM that waits for the state

    outcome = await platform.servers.drain("hv-a")

    assert "fail" in outcome[server].lower(), outcome
    assert remote.held() == [server] and local.held() == []
    assert network.of(server) == [before] and here_network.of(server) == []
    assert here_network.calls.count("attach") == 1  # made for the move, then removed
    assert network.overlays == {before.address: 5900} and here_network.overlays == {}
    await platform.servers.stop(user, server)
    await platform.servers.close()


class PeerlessNetwork(RecordingNetwork):
    """An agent host's network whose agent fails to answer."""

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        raise HypervisorError("host agent hv-a unreachable")


async def test_a_host_that_fails_the_watch_does_not_keep_the_others_from_it(
    tmp_path: Path,
) -> None:
    with platform_with_agent_host(tmp_path, network=PeerlessNetwork()) as (platform, *_):
        here_network = RecordingNetwork()
        platform.servers.networks.driver = here_network
        await platform.servers.recover()
        before = list(here_network.calls)
        await platform.servers.networks.refresh_vxlan_peers()  # hv-a's failure is logged
        assert here_network.calls == [*before, "set_vxlan_peers"]
        await platform.servers.close()


async def test_an_agent_back_has_its_hosts_nics_reconciled_there(two_hosts: Hosts) -> None:
    platform, _local, remote, network, user = two_hosts
    await platform.servers.recover()
    server = await server_on_agent_host(platform, user)
    [nic] = network.of(server)
    # The agent restarts: its network knows nothing, its VMs run on, held by nobody.
    network.nics.clear()
    await remote.detach_all()
    await platform.servers.lifecycle.watch_agents()
    assert remote.held() == [server]
    assert network.of(server) == [nic]  # kept there, its blocked ports in force again
    await platform.servers.stop(user, server)
    await platform.servers.close()


class SilentCountersNetwork(RecordingNetwork):
    """An agent host's network whose agent has just died (before any watch saw it)."""

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        raise HostUnreachableError("host agent hv-a unreachable: counters")


async def test_info_of_a_server_whose_agent_just_died_shows_no_traffic_rather_than_failing(
    tmp_path: Path,
) -> None:
    network = SilentCountersNetwork()
    with platform_with_agent_host(tmp_path, network=network) as (platform, _l, _r, user):
        await platform.servers.recover()
        server = await server_on_agent_host(platform, user)
        info = await platform.servers.info(user, server)
        assert (info["status"], info["rx"], info["tx"]) == ("active", 0, 0)
        await platform.servers.stop(user, server)
        await platform.servers.close()


async def test_each_hosts_vlans_flood_only_to_the_hosts_running_their_servers(
    two_hosts: Hosts,
) -> None:
    platform, _local, _remote, network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network
    platform.hosts.register()
    platform.hosts.set_vxlan_local(platform.hosts.name, "198.18.0.1")
    platform.hosts.set_vxlan_local("hv-a", "198.18.0.2")
    # hv-b: online with an underlay address, but runs no server of the VLAN.
    now = time.time()
    record = HostRecord(
        name="hv-b", state="online", cores=2, core_mhz=2000, memory_mb=1024,
        disk_bytes_by_tier={}, heartbeat_at=now, created_at=now, vxlan_local="198.18.0.3",
    )  # fmt: skip
    with platform.engine.begin() as connection:
        host_store.register_host(connection, record)
    await platform.servers.recover()
    vlan = str(platform.resources.create(user, "vlan", {})["resource"])
    on_vlan = {"nic:1:model": "e1000", "nic:1:vlan": vlan}

    # The VLAN's first server, on hv-a: its bridge there floods nowhere yet.
    there = await server_on_agent_host(platform, user, **on_vlan)
    assert [nic.vlan for nic in network.of(there)] == [None, vlan]
    assert network.flood_lists[-1] == {vlan: []}
    await platform.servers.networks.refresh_vxlan_peers()
    assert here_network.flood_lists[-1] == {}  # this host runs none of its servers

    # Its second, on this host: floods to hv-a at once, as its NICs are made.
    created = await platform.servers.create(user, {**SERVER, **on_vlan}, start=True)
    here = str(created["server"])
    assert (await platform.servers.info(user, here))["host"] == platform.hosts.name
    assert here_network.flood_lists[-1] == {vlan: ["198.18.0.2"]}
    # hv-a floods to this host from the next refresh on; hv-b is in nobody's list.
    await platform.servers.networks.refresh_vxlan_peers()
    assert network.flood_lists[-1] == {vlan: ["198.18.0.1"]}
    assert here_network.flood_lists[-1] == {vlan: ["198.18.0.2"]}

    # This host's server stops: hv-a floods to nobody again.
    await platform.servers.stop(user, here)
    await platform.servers.networks.refresh_vxlan_peers()
    assert network.flood_lists[-1] == {vlan: []}

    # hv-b runs one of the VLAN's servers (its row only) and hv-a's moves here: the lists
    # follow the move at once, not at the next refresh.
    with platform.engine.begin() as connection:
        connection.execute(
            insert(servers).values(
                uuid=OTHER,
                user=user,
                status="active",
                created_at=0,
                host="hv-b",
                config='{"name": "w", "cpu": "500", "mem": "64"}',
            )
        )
        resource_store.insert_nic(
            connection, server=OTHER, nic=1, user=user, network=vlan,
            mac="52:54:00:00:0b:01", address=None, temporary=False,
        )  # fmt: skip
    await platform.servers.networks.refresh_vxlan_peers()
    assert network.flood_lists[-1] == {vlan: ["198.18.0.3"]}
    outcome = await platform.servers.drain("hv-a")
    assert outcome[there] == f"moved {platform.hosts.name}", outcome
    assert here_network.flood_lists[-1] == {vlan: ["198.18.0.3"]}
    assert network.flood_lists[-1] == {}  # hv-a runs none of them now
    await platform.servers.stop(user, there)
    with platform.engine.begin() as connection:
        resource_store.delete_nics(connection, OTHER)
    await platform.servers.close()


async def test_a_vlan_is_taken_where_an_agents_host_runs_bridge_networking(
    two_hosts: Hosts,
) -> None:
    """The API node's own network is user mode (the fake platform's); hv-a's agent runs
    bridge mode. A VLAN NIC is accepted (where the server will run is not known at create)
    and made on hv-a; started on this host, whose mode has no VLANs, it is refused there."""
    platform, _local, _remote, network, user = two_hosts
    assert platform.servers.networks.driver.mode == "user"
    await platform.servers.recover()  # connects to the agents
    vlan = str(platform.resources.create(user, "vlan", {})["resource"])
    on_vlan = {"nic:1:model": "e1000", "nic:1:vlan": vlan}

    there = await server_on_agent_host(platform, user, **on_vlan)
    assert [nic.vlan for nic in network.of(there)] == [None, vlan]

    properties = {"name": "d", "size": "1M", "encryption:cipher": "none"}
    drive = str((await platform.drives.create(user, properties))["drive"])
    with platform.engine.begin() as connection:
        values = {"host": platform.hosts.name}
        connection.execute(update(drives).where(drives.c.uuid == drive).values(**values))
    created = await platform.servers.create(user, {**SERVER, **on_vlan, "ide:0:0": drive}, False)
    here = str(created["server"])
    with pytest.raises(UsageError, match="this host runs user-mode networking"):
        await platform.servers.start(user, here)
    assert (await platform.servers.info(user, here))["status"] == "stopped"
    await platform.servers.stop(user, there)
    await platform.servers.close()


async def test_a_vlan_is_refused_where_no_host_runs_bridge_networking(tmp_path: Path) -> None:
    user_mode = RecordingNetwork()
    user_mode.mode = "user"
    with platform_with_agent_host(tmp_path, network=user_mode) as (platform, _, _, user):
        await platform.servers.recover()
        vlan = str(platform.resources.create(user, "vlan", {})["resource"])
        with pytest.raises(UsageError, match="VLANs need bridge networking"):
            on_vlan = {"nic:1:model": "e1000", "nic:1:vlan": vlan}
            await platform.servers.create(user, {**SERVER, **on_vlan}, False)
        await platform.servers.close()


async def test_the_agents_watch_during_a_move_leaves_the_nics_made_on_its_target(
    two_hosts: Hosts,
) -> None:
    """The watch of the agents runs every few seconds, and a live move takes longer: the
    target's VM, waiting for its state, is no VM of a restarted agent. Once reconciled as
    one, hv-a's network (running another server) dropped the moved server's new NICs, and
    the guest, moved and running, was cut off its network."""
    platform, _local, remote, network, user = two_hosts
    platform.servers.networks.driver = RecordingNetwork()
    await platform.servers.recover()
    staying = await server_on_agent_host(platform, user)
    created = await platform.servers.create(user, dict(SERVER), start=True)
    moving = str(created["server"])
    assert (await platform.servers.info(user, moving))["host"] == platform.hosts.name

    prepare = remote.prepare_incoming

    async def prepare_then_watch(request: IncomingRequest) -> IncomingInfo:
        info = await prepare(request)
        await platform.servers.lifecycle.watch_agents()  # meanwhile, its 5-second look
        return info

    remote.prepare_incoming = prepare_then_watch  # type: ignore[method-assign]
    outcome = await platform.servers.drain(platform.hosts.name)

    assert outcome[moving] == "moved hv-a", outcome
    assert [nic.server for nic in network.of(moving)] == [moving]
    assert [nic.server for nic in network.of(staying)] == [staying]
    for server in (moving, staying):
        await platform.servers.stop(user, server)
    await platform.servers.close()
