"""The owner of the servers' VNC (services/servers/vnc.py): which display each server gets, and
when it gives it back. Over the fake hypervisor (real SQLite, real services), and with the real
host probe of QemuDriver for a port something else on the host listens on."""

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from openhosting.errors import BusyError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.hypervisor.qemu_driver import port_is_free
from openhosting.services.platform import Platform
from openhosting.store import servers as server_store
from openhosting.store.tables import servers as servers_table
from openhosting.vnc.ports import VNC_BASE_PORT, VNC_DISPLAYS, vnc_port
from tests.services.fake_platform import fake_platform

SERVER = {"name": "s", "cpu": "500", "mem": "64", "persistent": "true", "vnc:password": "pw"}
LISTEN = "127.0.0.1"  # the hypervisor's default vnc_listen (user-mode networking)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, str]]:
    with fake_platform(tmp_path) as (platform, hypervisor):
        yield platform, hypervisor, platform.accounts.create_user().uuid


def display_of(platform: Platform, server: str) -> int | None:
    with platform.engine.connect() as connection:
        row = server_store.get_server(connection, server)
    assert row is not None
    return row.vnc_display


async def started(platform: Platform, user: str, **extra: str) -> str:
    info = await platform.servers.create(user, {**SERVER, **extra}, start=True)
    return str(info["server"])


async def test_two_servers_never_get_the_same_display(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, _, user = fake
    first, second = await started(platform, user), await started(platform, user)
    assert display_of(platform, first) == 0
    assert display_of(platform, second) == 1
    # Where the user reaches them says so too.
    assert (await platform.servers.info(user, first))["vnc:ip"] == LISTEN
    assert "vnc:port" not in await platform.servers.info(user, first)  # 5900: the default
    assert (await platform.servers.info(user, second))["vnc:port"] == VNC_BASE_PORT + 1


async def test_a_server_without_a_password_gets_no_display(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    info = await platform.servers.create(user, {"name": "s", "cpu": "500", "mem": "64"}, True)
    server = str(info["server"])
    assert display_of(platform, server) is None
    vm = hypervisor.host.vms[server]
    assert vm.spec.vnc is None and vm.vnc_password is None


async def test_a_display_is_released_on_stop_crash_and_destroy_and_taken_again(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    first, second = await started(platform, user), await started(platform, user)

    await platform.servers.stop(user, first)
    assert display_of(platform, first) is None
    third = await started(platform, user)
    assert display_of(platform, third) == 0  # the stopped server's display, free again

    await hypervisor.crash(second)
    assert display_of(platform, second) is None

    await platform.servers.destroy(user, third)
    await platform.servers.start(user, first)
    assert display_of(platform, first) == 0
    await platform.servers.start(user, second)
    assert display_of(platform, second) == 1


async def test_a_start_that_fails_gives_its_display_back(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    info = await platform.servers.create(user, SERVER, start=False)
    server = str(info["server"])
    hypervisor.fail_next_start()
    with pytest.raises(Exception, match="simulated"):
        await platform.servers.start(user, server)
    assert display_of(platform, server) is None
    await platform.servers.start(user, server)
    assert display_of(platform, server) == 0


async def test_a_display_whose_port_something_else_holds_is_skipped(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    hypervisor.host.ports_in_use.update({(LISTEN, vnc_port(0)), (LISTEN, vnc_port(1))})
    server = await started(platform, user)
    assert display_of(platform, server) == 2
    assert hypervisor.host.vms[server].spec.vnc is not None
    assert hypervisor.host.vms[server].spec.vnc.display == 2


async def test_no_free_display_is_409_busy_and_the_server_stays_stopped(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, hypervisor, user = fake
    hypervisor.host.ports_in_use.update((LISTEN, vnc_port(d)) for d in range(VNC_DISPLAYS))
    info = await platform.servers.create(user, SERVER, start=False)
    with pytest.raises(BusyError, match="No free VNC display"):
        await platform.servers.start(user, str(info["server"]))
    assert (await platform.servers.info(user, str(info["server"])))["status"] == "stopped"
    with platform.engine.connect() as connection:
        query = select(func.count()).where(servers_table.c.vnc_display.is_not(None))
        assert connection.execute(query).scalar() == 0


def listen_on_a_free_vnc_port() -> tuple[socket.socket, int]:
    """A socket listening on the loopback port of the first display free now (bounded: others
    on this host may take one meanwhile)."""
    for display in range(VNC_DISPLAYS):
        listener = socket.socket()
        try:
            listener.bind((LISTEN, vnc_port(display)))
        except OSError:
            listener.close()
            continue
        listener.listen()
        return listener, display
    raise AssertionError("every VNC port of this host is taken")


# It holds a real VNC port of the host: with the guests' tests (one after another, on one
# xdist worker), or a QEMU started meanwhile could find that port taken.
@pytest.mark.integration
async def test_the_hosts_own_probe_skips_a_port_a_real_listener_holds(
    fake: tuple[Platform, FakeHypervisor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, hypervisor, user = fake
    # QemuDriver's probe, on this host's real ports.
    monkeypatch.setattr(hypervisor, "vnc_port_free", port_is_free)
    listener, held = listen_on_a_free_vnc_port()
    with listener:
        assert not port_is_free(LISTEN, vnc_port(held))
        server = await started(platform, user)
        display = display_of(platform, server)
        assert display is not None and display != held
    assert port_is_free(LISTEN, vnc_port(held))  # the probe itself holds nothing


async def test_servers_started_at_once_get_displays_of_their_own(
    fake: tuple[Platform, FakeHypervisor, str],
) -> None:
    platform, _, user = fake
    created = [await platform.servers.create(user, SERVER, start=False) for _ in range(3)]
    servers = [str(info["server"]) for info in created]
    await asyncio.gather(*(platform.servers.start(user, server) for server in servers))
    assert {display_of(platform, server) for server in servers} == {0, 1, 2}
