"""`host drain` in the services (services/servers/server_moves.py): real SQLite and drive files, two
fake hypervisors standing for this host's driver and another host's agent (fast; the same
over real agents and QEMU is tests/cluster/test_host_drain.py). Every server of the host
moves to the other one with room, its row and its drive's following only once it moved; one
that cannot move is reported and runs on where it was."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from openhosting.errors import MissingError
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.services.platform import Platform
from openhosting.storage.luks import payload_offset
from openhosting.store import drives as drive_store
from openhosting.store import servers as server_store
from openhosting.store.tables import drives, hosts
from tests.services.fake_platform import platform_with_agent_host

DATA = b"the guest's own bytes, which must move with it"


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor, FakeHypervisor, str]]:
    """A platform on its own host, with host `hv-a` whose agent is a fake of its own."""
    with platform_with_agent_host(tmp_path) as hosts_and_user:
        yield hosts_and_user


async def running_server(
    platform: Platform, user: str, mem: int, cipher: str = "none"
) -> tuple[str, Path]:
    """A server running on this host from a drive holding DATA; its id and drive's file."""
    properties = {"name": "d", "size": "1M", "encryption:cipher": cipher}
    drive = str((await platform.drives.create(user, properties))["drive"])
    with platform.engine.begin() as connection:  # on this host, whatever placement chose
        connection.execute(
            update(drives).where(drives.c.uuid == drive).values(host=platform.hosts.name)
        )
    path = platform.drives.attachable(user, drive).path
    if cipher == "none":
        with path.open("r+b") as file:
            file.write(DATA)
    config = {"name": "s", "cpu": "500", "mem": str(mem), "ide:0:0": drive, "boot": "ide:0:0"}
    server = await platform.servers.create(user, config, start=True)
    return str(server["server"]), path


def row_of(platform: Platform, server: str) -> server_store.ServerRecord:
    with platform.engine.connect() as connection:
        row = server_store.get_server(connection, server)
    assert row is not None
    return row


async def test_a_drain_moves_each_server_that_fits_and_leaves_the_other_running(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()  # connects to the agents
    here = platform.hosts.name
    small, small_drive = await running_server(platform, user, 64)
    big, _ = await running_server(platform, user, 128)
    started = {server: row_of(platform, server).started_at for server in (small, big)}
    with platform.engine.begin() as connection:  # hv-a has room for the small one only
        connection.execute(update(hosts).where(hosts.c.name == "hv-a").values(memory_mb=100))

    outcome = await platform.servers.drain(here)

    assert outcome[small] == "moved hv-a"
    assert "No other host has 500 MHz of cpu and 128 MiB of mem free" in outcome[big]
    assert remote.held() == [small] and local.held() == [big]
    info = await platform.servers.info(user, small)
    assert (info["status"], info["host"]) == ("active", "hv-a")
    assert row_of(platform, small).started_at == started[small]  # a move is not a start
    assert row_of(platform, big).host == "" and row_of(platform, big).started_at == started[big]
    drive = str(info["ide:0:0"])
    assert platform.drives.info(user, drive)["host"] == "hv-a"
    # The copy is the drive now, under its own name; nothing else is left beside it.
    assert small_drive.read_bytes()[: len(DATA)] == DATA
    assert sorted(p.name for p in small_drive.parent.iterdir() if "moving" in p.name) == []

    # The moved server lives on its new host: a stop goes there.
    await platform.servers.stop(user, small)
    assert remote.held() == []
    await platform.servers.stop(user, big)
    await platform.servers.close()


async def test_an_encrypted_drive_moves_as_stored_with_its_passphrase_and_header(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()
    server, drive_file = await running_server(platform, user, 16, cipher="aes-xts-plain")
    stored = drive_file.read_bytes()  # the LUKS header and the ciphertext
    drive = str((await platform.servers.info(user, server))["ide:0:0"])
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None
    passphrase = platform.drives.passphrase_of(row)
    assert passphrase is not None

    outcome = await platform.servers.drain(platform.hosts.name)

    assert outcome[server] == "moved hv-a"
    assert remote.held() == [server] and local.held() == []
    assert platform.drives.info(user, drive)["host"] == "hv-a"
    (request,) = remote.incoming_requests
    # The target opens the same container: the passphrase as for a start, the header as
    # stored up to the payload (its key material included), the whole file's size.
    assert [secret.passphrase for secret in request.start.secrets] == [passphrase]
    (disk,) = request.start.spec.disks
    assert disk.format == "luks" and disk.secret_file is not None
    header = dict(request.drive_headers)["ide:0:0"]
    payload = payload_offset(drive_file)
    assert header == stored[:payload].rstrip(b"\0") and header.startswith(b"LUKS\xba\xbe")
    assert dict(request.drive_bytes)["ide:0:0"] == len(stored)
    assert drive_file.read_bytes() == stored  # the copy is the drive, still encrypted
    await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_a_shared_drive_another_server_writes_is_not_moved(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()
    properties = {"name": "d", "size": "1M", "claim:type": "shared"}
    drive = str((await platform.drives.create(user, properties))["drive"])
    with platform.engine.begin() as connection:  # on this host, whatever placement chose
        connection.execute(
            update(drives).where(drives.c.uuid == drive).values(host=platform.hosts.name)
        )
    servers = []
    for name in ("one", "two"):
        config = {"name": name, "cpu": "500", "mem": "16", "ide:0:0": drive}
        servers.append(str((await platform.servers.create(user, config, start=True))["server"]))

    outcome = await platform.servers.drain(platform.hosts.name)

    first, second = servers
    assert f"is shared with server {second}, which writes it too" in outcome[first]
    assert f"is shared with server {first}, which writes it too" in outcome[second]
    assert remote.incoming_requests == [] and sorted(local.held()) == sorted(servers)
    for server in servers:
        assert (await platform.servers.info(user, server))["host"] == platform.hosts.name
        await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_a_move_that_fails_half_way_leaves_the_server_where_it_was(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, local, remote, user = two_hosts
    await platform.servers.recover()
    here = platform.hosts.name
    server, drive_file = await running_server(platform, user, 64)
    remote.fail_next_start()  # the target cannot start the VM that waits for the state

    outcome = await platform.servers.drain(here)

    assert "fail" in outcome[server].lower(), outcome
    assert local.held() == [server] and remote.held() == []
    info = await platform.servers.info(user, server)
    assert (info["status"], info["host"]) == ("active", here)
    assert platform.drives.info(user, str(info["ide:0:0"]))["host"] == here
    assert drive_file.read_bytes()[: len(DATA)] == DATA
    assert [p.name for p in drive_file.parent.iterdir() if "moving" in p.name] == []
    await platform.servers.stop(user, server)
    await platform.servers.close()


async def test_a_drain_of_a_host_nobody_registered_is_missing(
    two_hosts: tuple[Platform, FakeHypervisor, FakeHypervisor, str],
) -> None:
    platform, _, _, _ = two_hosts
    with pytest.raises(MissingError, match="hv-nowhere"):
        await platform.servers.drain("hv-nowhere")
    assert await platform.servers.drain("hv-a") == {}  # nothing runs there
