"""A live move meets an API node's reconnection to a host's agent (its agent back after a
watch found it down, or the API node's own start): what the move has made and not yet
recorded (the target's VM waiting for its state, its NICs there) is the move's, and the
source's VM runs on until the switch-over. The reconnection's adoption and reconciles leave
a server in an operation's hand alone (`Operations.under_way`), and what they left is
reconciled at the watch's next look once the move is over.

Deterministic: the move is held at its target's incoming step (the fake hypervisor's
`prepare_incoming`) while the reconnection runs. Fake drivers, real services and SQLite."""

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor.driver import (
    IncomingInfo,
    IncomingRequest,
    StartRequest,
    StateStream,
    VmStatus,
)
from openhosting.hypervisor.errors import HostUnreachableError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from openhosting.store import resources as resource_store
from tests.services.fake_platform import RecordingNetwork, platform_with_agent_host
from tests.services.servers.test_host_networks import SERVER, Hosts, server_on_agent_host


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Hosts]:
    """This host and hv-a, whose agent's network records what it is asked."""
    network = RecordingNetwork(namespace="oh-hv-a", vnc_address="198.51.100.7")
    with platform_with_agent_host(tmp_path, network=network) as (platform, local, remote, user):
        yield platform, local, remote, network, user


def hold_at_incoming(target: FakeHypervisor, meanwhile: Callable[[], Awaitable[None]]) -> None:
    """`target`'s next incoming VM, once made (its NICs made before it), waits for
    `meanwhile` to run before the move goes on."""
    prepare = target.prepare_incoming

    async def prepare_then(request: IncomingRequest) -> IncomingInfo:
        info = await prepare(request)
        await meanwhile()
        return info

    target.prepare_incoming = prepare_then  # type: ignore[method-assign]


async def agent_away_then_back(platform: Platform, agent: FakeHypervisor, host: str) -> None:
    """The watch finds `agent` down, then back: the reconnection's adoption and reconciles."""

    async def unreachable() -> list[str]:
        raise HostUnreachableError(f"host agent {host} unreachable: unheld")

    agent.unheld = unreachable  # type: ignore[method-assign]
    await platform.servers.lifecycle.watch_agents()
    assert platform.servers.lifecycle.host_down(host)
    del agent.unheld  # answers again
    await platform.servers.lifecycle.watch_agents()
    assert not platform.servers.lifecycle.host_down(host)


async def test_a_moves_target_whose_agent_comes_back_keeps_the_nics_made_for_it(
    two_hosts: Hosts,
) -> None:
    """hv-a's agent is found back while a server moves there: its adoption re-adopted
    hv-a's other server and reconciled hv-a's network to that one's NICs, removing those
    just made for the incoming VM (its row still names the source): the moved guest ran
    on hv-a cut off its network."""
    platform, _local, remote, network, user = two_hosts
    platform.servers.networks.driver = RecordingNetwork()
    await platform.servers.recover()
    staying = await server_on_agent_host(platform, user)
    moving = str((await platform.servers.create(user, dict(SERVER), start=True))["server"])
    seen_meanwhile: list[list[str]] = []

    async def agent_blinks() -> None:
        await agent_away_then_back(platform, remote, "hv-a")
        seen_meanwhile.append([nic.server for nic in network.of(moving)])

    hold_at_incoming(remote, agent_blinks)
    outcome = await platform.servers.drain(platform.hosts.name)

    assert outcome[moving] == "moved hv-a", outcome
    assert seen_meanwhile == [[moving]]  # kept while the move went on
    assert remote.held() == sorted([moving, staying])
    assert [nic.server for nic in network.of(moving)] == [moving]
    assert [nic.server for nic in network.of(staying)] == [staying]
    # What the reconnection left is reconciled at the watch's next look, the move over.
    reconciles = network.calls.count("reconcile")
    await platform.servers.lifecycle.watch_agents()
    assert network.calls.count("reconcile") == reconciles + 1
    assert {nic.server for nic in network.nics.values()} == {moving, staying}
    for server in (moving, staying):
        await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_a_moves_source_whose_agent_comes_back_keeps_its_vm_until_the_switch_over(
    two_hosts: Hosts,
) -> None:
    """hv-a's agent is found back while a server moves off it: the VM there still runs the
    guest and is the move's, neither adopted again nor stopped, nor its NICs removed."""
    platform, local, remote, network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network
    await platform.servers.recover()
    moving = await server_on_agent_host(platform, user)
    [nic] = network.of(moving)
    seen_meanwhile: list[tuple[list[str], list[str]]] = []

    async def agent_blinks() -> None:
        await agent_away_then_back(platform, remote, "hv-a")
        seen_meanwhile.append((remote.held(), [n.server for n in network.of(moving)]))

    hold_at_incoming(local, agent_blinks)
    outcome = await platform.servers.drain("hv-a")

    assert outcome[moving] == f"moved {platform.hosts.name}", outcome
    assert seen_meanwhile == [([moving], [moving])]
    assert local.held() == [moving] and remote.held() == []
    assert here_network.of(moving) == [nic] and network.of(moving) == []
    await platform.servers.stop(user, moving)
    await platform.servers.close()


@pytest.mark.parametrize("towards", ["hv-a", "here"])
async def test_an_api_node_starting_during_a_move_leaves_both_ends_to_the_move(
    two_hosts: Hosts, towards: str
) -> None:
    """An API node that starts (here: `recover` again, as a second node's start would)
    while a server moves, to an agent's host or off it: its adoption took the source's VM
    as its own, stopped the target's VM waiting for its state as an orphan (the move
    failed) and reconciled the target's network without the NICs made there."""
    platform, local, remote, network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network
    await platform.servers.recover()
    on_agent = await server_on_agent_host(platform, user)
    here = str((await platform.servers.create(user, dict(SERVER), start=True))["server"])
    if towards == "hv-a":
        moving, staying, source = here, on_agent, platform.hosts.name
        target, target_network = remote, network
    else:
        moving, staying, source = on_agent, here, "hv-a"
        target, target_network = local, here_network
    seen_meanwhile: list[tuple[list[str], list[str]]] = []

    async def node_starts() -> None:
        await platform.servers.recover()
        nics = [n.server for n in target_network.of(moving)]
        seen_meanwhile.append((sorted(target.host.vms), nics))

    hold_at_incoming(target, node_starts)
    outcome = await platform.servers.drain(source)

    assert outcome[moving] == f"moved {towards if towards == 'hv-a' else platform.hosts.name}"
    assert seen_meanwhile == [(sorted([moving, staying]), [moving])]
    assert target.held() == sorted([moving, staying])
    assert {nic.server for nic in target_network.nics.values()} == {moving, staying}
    assert [n for n in (network.nics | here_network.nics).values() if n.server == moving] == [
        *target_network.of(moving)
    ]  # none left on the source
    # The target's reconcile left at the start is done at the watch's next look.
    reconciles = target_network.calls.count("reconcile")
    await platform.servers.lifecycle.watch_agents()
    assert target_network.calls.count("reconcile") == reconciles + 1
    assert {nic.server for nic in target_network.nics.values()} == {moving, staying}
    for server in (moving, staying):
        await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_an_api_node_starting_during_a_start_leaves_its_claims_nics_and_vm(
    two_hosts: Hosts,
) -> None:
    """The same rule for any operation: a node that starts while a server starts (its
    drive claimed, its NICs made, its QEMU starting, the server not yet `active`) released
    the drive's claim and the NICs' rows as a dead start's leftovers and reconciled the
    network without them, under the start that went on."""
    platform, local, _remote, _network, user = two_hosts
    here_network = RecordingNetwork()
    platform.servers.networks.driver = here_network
    await platform.servers.recover()
    drive = str((await platform.drives.create(user, {"name": "d", "size": "1M"}))["drive"])
    with platform.engine.begin() as connection:
        drive_store.update_drive(connection, drive, host=platform.hosts.name)
    start = local.start

    async def node_starts_first(
        request: StartRequest, restore: StateStream | None = None
    ) -> VmStatus:
        await platform.servers.recover()
        return await start(request, restore)

    local.start = node_starts_first  # type: ignore[method-assign]
    created = await platform.servers.create(user, {**SERVER, "ide:0:0": drive}, start=True)
    server = str(created["server"])

    info = await platform.servers.info(user, server)
    assert (info["status"], info["host"]) == ("active", platform.hosts.name)
    with platform.engine.connect() as connection:
        assert [c.holder for c in drive_store.claims_on(connection, drive)] == [server]
        assert [row.server for row in resource_store.nics_of(connection, server)] == [server]
    assert [nic.server for nic in here_network.of(server)] == [server]
    await platform.servers.stop(user, server)
    await platform.servers.close()
