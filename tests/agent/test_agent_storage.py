"""The drives an agent holds, reached from the control plane through `RemoteDriveStorage` over
mutual TLS to a real `openhosting-agent` on loopback: the files are the agent's, in its own
drive directory; writes (raw and staged), reads, hashes, resizes and destroys move the bytes
there and back; refusals come back as the API's errors; a write given up half-way changes
nothing of a staged write's drive; another host's certificate gets nothing, through the calls
or the byte streams, and a stream to an agent that is not the host's goes no further than its
handshake. A start names its drives, which the agent opens in its own directory."""

import asyncio
import dataclasses
import gzip
import hashlib
import os
import uuid
from pathlib import Path

import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.agent.pki import Bundle, control_context
from openhosting.agent.server import own_drive_paths
from openhosting.errors import FailedError, FullError, MissingError, UnavailableError
from openhosting.hypervisor.driver import StartRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from openhosting.services.servers.server_moves import stored_luks_header
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.luks import payload_offset
from openhosting.storage.remote_storage import RemoteDriveStorage
from testbed.agent_process import AgentProcess, Cluster, agent_process

MIB = 1 << 20


def storage_of(
    agent: AgentProcess, cluster: Cluster, bundle: Bundle | None = None
) -> RemoteDriveStorage:
    return RemoteDriveStorage(
        HostConnection("hv-a", agent.address, control_context(bundle or cluster.control))
    )


class Noted:
    """What a read's or write's end told."""

    def __init__(self) -> None:
        self.ends: list[int | None] = []

    def wrote(self, written: int | None) -> None:
        self.ends.append(written)

    def read(self) -> None:
        self.ends.append(-1)


async def write(storage: RemoteDriveStorage, drive: str, data: bytes, *, key: bytes | None = None,
                offset: int = 0, size: int = MIB, staged: bool = False) -> int:  # fmt: skip
    noted = Noted()
    writer = storage.open_write(DriveBytes(drive, "disk", key), offset, size, staged, noted.wrote)
    if not staged:
        await writer.reserve(len(data))
    for start in range(0, len(data), 100_000):
        await writer.write(data[start : start + 100_000])
    written = await writer.finish()
    assert noted.ends == [written]
    return written


async def read(storage: RemoteDriveStorage, drive: str, offset: int, count: int,
               key: bytes | None = None) -> bytes:  # fmt: skip
    noted = Noted()
    plan = storage.open_read(DriveBytes(drive, "disk", key), offset, count, noted.read)
    try:
        await plan.begin()
        return b"".join([bytes(chunk) async for chunk in plan.chunks()])
    finally:
        plan.close()
        assert noted.ends == [-1]


def test_the_agent_keeps_its_drives_in_its_own_directory_and_streams_their_bytes(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    async def scenario() -> None:
        storage = storage_of(agent_a, cluster)
        try:
            plain, secret = str(uuid.uuid4()), str(uuid.uuid4())
            assert await storage.create(plain, "disk", MIB, None) is None
            key = await storage.create(secret, "disk", MIB, b"a passphrase")
            assert key is not None and len(key) >= 32
            path = agent_dir / "state" / "drives" / f"{plain}.img"
            assert path.stat().st_size == MIB

            data = os.urandom(700_000)
            for drive, drive_key in ((plain, None), (secret, key)):
                assert await write(storage, drive, data, key=drive_key, offset=1000) == len(data)
                assert await read(storage, drive, 1000, len(data), drive_key) == data
                plan = storage.open_read(
                    DriveBytes(drive, "disk", drive_key), 1000, len(data), lambda: None
                )
                assert await plan.sha256() == hashlib.sha256(data).hexdigest()
                plan.close()
            assert path.read_bytes()[1000 : 1000 + len(data)] == data  # the agent's own file
            assert "reverter_left_open" not in agent_a.log.read_text()  # allocate closes
            # The encrypted one's file holds no plaintext.
            assert data[:4096] not in (path.parent / f"{secret}.img").read_bytes()

            # A staged write (a gzip body's bytes) lands whole at its end.
            staged = os.urandom(300_000)
            assert await write(storage, plain, staged, staged=True) == len(staged)
            assert await read(storage, plain, 0, len(staged)) == staged

            await storage.resize(plain, "disk", 2 * MIB, None, MIB)
            assert path.stat().st_size == 2 * MIB
            await storage.destroy(plain, "disk")
            await storage.destroy(secret, "disk")
            assert not path.exists() and list(path.parent.glob("*.img")) == []
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_a_moves_header_of_an_encrypted_drive_is_read_from_its_agent_as_stored(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    # What a live migration's target writes before its QEMU opens the container: the
    # agent's file's own leading bytes, not decrypted; a plain drive has none to give.
    async def scenario() -> None:
        storage = storage_of(agent_a, cluster)
        try:
            secret, plain = str(uuid.uuid4()), str(uuid.uuid4())
            assert await storage.create(secret, "disk", MIB, b"a passphrase") is not None
            await storage.create(plain, "disk", MIB, None)
            header, offset = await stored_luks_header(storage, secret, "disk")
            stored = (agent_dir / "state" / "drives" / f"{secret}.img").read_bytes()
            assert offset == payload_offset(agent_dir / "state" / "drives" / f"{secret}.img")
            assert stored[:offset] == header.ljust(offset, b"\0")
            assert header.startswith(b"LUKS\xba\xbe") and len(header) > 4096  # key material
            with pytest.raises(FailedError, match="not a LUKS container"):
                await stored_luks_header(storage, plain, "disk")
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_refusals_come_back_as_the_api_errors_and_a_cut_staged_write_changes_nothing(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    async def scenario() -> None:
        storage = storage_of(agent_a, cluster)
        try:
            drive = str(uuid.uuid4())
            await storage.create(drive, "disk", MIB, None)
            before = os.urandom(MIB)
            await write(storage, drive, before)

            # Past the drive's end: refused before the bytes go.
            with pytest.raises(FullError):
                await write(storage, drive, bytes(2000), offset=MIB - 1000)
            # A staged write given up half-way (its client went away): the drive unchanged.
            noted = Noted()
            writer = storage.open_write(DriveBytes(drive, "disk"), 0, MIB, True, noted.wrote)
            await writer.write(gzip.compress(bytes(1)) * 1000)
            await writer.abort()
            assert noted.ends == [None]
            # The agent aborts its side once it sees the body cut (bounded wait).
            for _ in range(50):
                if await read(storage, drive, 0, MIB) == before:
                    break
                await asyncio.sleep(0.1)
            assert await read(storage, drive, 0, MIB) == before

            # A drive the agent does not have is missing; an unreachable agent fails.
            with pytest.raises(MissingError):
                await read(storage, str(uuid.uuid4()), 0, 10)
            gone = RemoteDriveStorage(
                HostConnection("hv-a", "127.0.0.1:1", control_context(cluster.control))
            )
            with pytest.raises(UnavailableError, match="hv-a"):
                await gone.create(str(uuid.uuid4()), "disk", MIB, None)
            assert not gone.is_available(drive, "disk")
            await gone.close()
            await storage.destroy(drive, "disk")
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_another_hosts_certificate_gets_nothing_of_the_drives(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    async def scenario() -> None:
        impostor = storage_of(agent_a, cluster, cluster.host("hv-b"))
        storage = storage_of(agent_a, cluster)
        try:
            drive = str(uuid.uuid4())
            with pytest.raises(FailedError, match="control plane"):
                await impostor.create(drive, "disk", MIB, None)
            assert not (agent_dir / "state" / "drives" / f"{drive}.img").exists()
            # Nor through the byte streams: a read answers nothing, a write changes nothing.
            data, noted = os.urandom(MIB), Noted()
            await storage.create(drive, "disk", 4 * MIB, None)
            assert await write(storage, drive, data) == MIB
            with pytest.raises(FailedError, match="control plane"):
                await read(impostor, drive, 0, MIB)
            writer = impostor.open_write(DriveBytes(drive, "disk"), 0, 4 * MIB, False, noted.wrote)
            with pytest.raises(FailedError, match="control plane"):
                for _ in range(4):
                    await writer.write(bytes(MIB))
                await writer.finish()
            await writer.abort()
            assert noted.ends == [None] and await read(storage, drive, 0, MIB) == data
            await storage.destroy(drive, "disk")
        finally:
            await impostor.close()
            await storage.close()

    asyncio.run(scenario())


def test_a_stream_to_another_hosts_agent_is_refused_before_the_call_goes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A storage of hv-a pointed at hv-b's agent: its certificate does not name hv-a, so
    the stream ends at the handshake (503), the call (its key) never sent."""

    async def scenario() -> None:
        with agent_process(tmp_path / "b", cluster.host("hv-b")) as agent_b:
            misled = storage_of(agent_b, cluster)
            plan = misled.open_read(
                DriveBytes(str(uuid.uuid4()), "disk", b"k" * 64), 0, MIB, Noted().read
            )
            with pytest.raises(UnavailableError, match=r"hv-a.*certificate"):
                await plan.begin()
            plan.close()
            await misled.close()

    asyncio.run(scenario())


def test_a_start_names_its_drives_and_the_agent_opens_its_own_files_of_them(
    tmp_path: Path,
) -> None:
    storage = LocalDriveStorage(DriveTiers({"disk": tmp_path / "drives"}))
    drive = str(uuid.uuid4())
    named = DiskSpec("ide:0:0", Path("/control-plane/drives/x.img"), drive=drive, tier="disk")
    unnamed = DiskSpec("ide:0:1", Path("/images/cd.iso"), media="cdrom")
    spec = VmSpec(str(uuid.uuid4()), 1, 64, tmp_path / "run", disks=(named, unnamed))
    resolved = own_drive_paths(storage, StartRequest(spec)).spec.disks
    assert [disk.path for disk in resolved] == [
        tmp_path / "drives" / f"{drive}.img",
        Path("/images/cd.iso"),
    ]
    with pytest.raises(HypervisorError, match="tier ssd"):
        own_drive_paths(
            storage,
            StartRequest(
                dataclasses.replace(spec, disks=(dataclasses.replace(named, tier="ssd"),))
            ),
        )
    # A name becomes a file name on the agent: nothing but a UUID and a tier.
    for bad in ({"drive": "../../etc/passwd"}, {"drive": drive, "tier": "../x"}):
        with pytest.raises(ValueError):
            dataclasses.replace(named, **bad)
