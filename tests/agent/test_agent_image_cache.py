"""A host's image cache of standard drives (agent/image_cache.py), on its own files and through
a real `openhosting-agent` on loopback over mutual TLS (storage/remote_image_cache.py): a fill
puts a whole, read-only copy in place (its zero runs holes) or leaves nothing (cut half-way,
the wrong size, a file error); the copy is found, listed and removed; another host's
certificate gets nothing; a start's cdrom naming a copy opens the copy, apart from the drive
tiers. The control plane's side of it is tests/services/drives/test_standard_copies.py."""

import asyncio
import os
import socket
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.agent.image_cache import CACHE_DIRECTORY, ImageCache
from openhosting.agent.pki import Bundle, control_context
from openhosting.agent.server import cached_copy_paths
from openhosting.errors import FailedError, UnavailableError, UsageError
from openhosting.hypervisor.driver import StartRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import DiskSpec, VmSpec
from openhosting.storage.remote_image_cache import RemoteImageCache
from openhosting.storage.remote_storage import RemoteDriveStorage
from openhosting.storage.storage_calls import CachedCopy
from testbed.agent_process import AgentProcess, Cluster

MIB = 1 << 20
GENERATION = "661791be1788d"


def cache_of(
    agent: AgentProcess, cluster: Cluster, bundle: Bundle | None = None
) -> RemoteImageCache:
    context = control_context(bundle or cluster.control)
    return RemoteImageCache(RemoteDriveStorage(HostConnection("hv-a", agent.address, context)))


async def pieces_of(data: bytes, cut_after: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MIB):
        if cut_after is not None and start >= cut_after:
            raise ConnectionError("the source went away")
        yield data[start : start + MIB]


def image(size: int = 3 * MIB) -> bytes:
    """Random bytes with a zero run of 1 MiB in the middle."""
    return os.urandom(MIB) + bytes(MIB) + os.urandom(size - 2 * MIB)


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.is_dir() else []


# -- the cache's own files ------------------------------------------------------------


def test_a_fill_puts_a_whole_read_only_copy_in_place_with_holes(tmp_path: Path) -> None:
    cache, drive, data = ImageCache(tmp_path / "cache"), str(uuid.uuid4()), image()
    views = [memoryview(data)[start : start + MIB] for start in range(0, len(data), MIB)]
    assert cache.fill(drive, GENERATION, len(data), views) == len(data)
    path = cache.path_of(drive, GENERATION)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.stat().st_blocks * 512 <= 2 * MIB + 64 * 1024  # the zero MiB a hole
    assert files_in(cache.directory) == [path.name]
    assert cache.copies() == [CachedCopy(drive, GENERATION, len(data))]
    assert cache.has(drive, GENERATION) and not cache.has(drive, "1")


def test_a_fill_that_fails_leaves_nothing(tmp_path: Path) -> None:
    cache, drive, data = ImageCache(tmp_path / "cache"), str(uuid.uuid4()), image()
    views = [memoryview(data)]
    with pytest.raises(UsageError, match="announced"):
        cache.fill(drive, GENERATION, len(data) + 1, views)
    with pytest.raises(UsageError, match="announced"):
        cache.fill(drive, GENERATION, len(data) - 1, views)

    def cut() -> Iterator[memoryview]:
        yield memoryview(data)[:MIB]
        raise ConnectionError("the control plane went away")

    with pytest.raises(ConnectionError):
        cache.fill(drive, GENERATION, len(data), cut())
    # A directory where the copy goes: the rename fails, its temporary file goes.
    cache.path_of(drive, GENERATION).mkdir()
    with pytest.raises(FailedError, match="Cannot write a copy"):
        cache.fill(drive, GENERATION, len(data), views)
    assert files_in(cache.directory) == [cache.path_of(drive, GENERATION).name]
    assert cache.copies() == []


def test_names_are_checked_and_partial_files_cleared(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    for drive, generation in (("../x", GENERATION), (str(uuid.uuid4()), "../../etc"), ("", "1")):
        with pytest.raises(ValueError):
            cache.path_of(drive, generation)
    assert cache.copies() == [] and cache.clear_partial() == 0
    cache.directory.mkdir()
    drive = str(uuid.uuid4())
    partial = cache.directory / f".{drive}-{GENERATION}.img.x1y2.part"
    partial.write_bytes(b"half")
    (cache.directory / "other-file").write_bytes(b"not a copy")
    assert cache.copies() == []
    assert cache.clear_partial() == 1 and not partial.exists()


def test_a_start_opens_the_copy_its_cdrom_names(tmp_path: Path) -> None:
    cache, drive = ImageCache(tmp_path / "cache"), str(uuid.uuid4())
    disk = DiskSpec(slot="ide:0:1", path=Path("/elsewhere"), media="cdrom", drive=drive,
                    cache=GENERATION)  # fmt: skip
    request = StartRequest(VmSpec(uuid=str(uuid.uuid4()), smp=1, mem_mb=64,
                                  run_dir=tmp_path / "run", disks=(disk,)))  # fmt: skip
    with pytest.raises(HypervisorError, match="no copy of standard drive"):
        cached_copy_paths(cache, request)
    cache.fill(drive, GENERATION, 4, [memoryview(b"data")])
    (opened,) = cached_copy_paths(cache, request).spec.disks
    assert opened.path == cache.path_of(drive, GENERATION)
    with pytest.raises(HypervisorError, match="no image cache"):
        cached_copy_paths(None, request)
    for bad in ({"media": "disk"}, {"tier": "disk"}, {"cache": "x/y"}):
        with pytest.raises(ValueError):
            DiskSpec(**{"slot": "ide:0:1", "path": Path("/p"), "media": "cdrom",  # type: ignore[arg-type]
                        "drive": drive, "cache": GENERATION, **bad})  # fmt: skip


# -- through a real agent -----------------------------------------------------------------


def test_the_agent_fills_finds_lists_and_removes_copies(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    directory = agent_dir / "state" / CACHE_DIRECTORY

    async def scenario() -> None:
        cache = cache_of(agent_a, cluster)
        drive, data = str(uuid.uuid4()), image()
        try:
            assert not await cache.lookup(drive, GENERATION)
            assert await cache.fill(drive, GENERATION, len(data), pieces_of(data)) == len(data)
            assert await cache.lookup(drive, GENERATION)
            assert (directory / f"{drive}-{GENERATION}.img").read_bytes() == data
            assert CachedCopy(drive, GENERATION, len(data)) in await cache.copies()
            # Not a drive of the host's tiers: no drive call reaches it.
            assert not list((agent_dir / "state").glob(f"drives/{drive}*"))

            # Cut half-way, or not the size announced: the agent keeps nothing of it.
            other = str(uuid.uuid4())
            with pytest.raises(ConnectionError):
                await cache.fill(other, GENERATION, len(data), pieces_of(data, cut_after=MIB))
            with pytest.raises(UsageError, match="announced"):
                await cache.fill(other, GENERATION, len(data) + 5, pieces_of(data))
            await asyncio.sleep(0.2)  # the agent's thread ends its cut stream
            assert not await cache.lookup(other, GENERATION)
            assert files_in(directory) == [f"{drive}-{GENERATION}.img"]

            assert await cache.remove(drive, GENERATION)
            assert not await cache.remove(drive, GENERATION)
            assert files_in(directory) == []
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_another_hosts_certificate_gets_nothing_of_the_cache(
    agent_a: AgentProcess, cluster: Cluster, agent_dir: Path
) -> None:
    directory = agent_dir / "state" / CACHE_DIRECTORY

    async def scenario() -> None:
        impostor = cache_of(agent_a, cluster, cluster.host("hv-b"))
        drive, data = str(uuid.uuid4()), image()
        try:
            with pytest.raises(FailedError, match="control plane"):
                await impostor.lookup(drive, GENERATION)
            with pytest.raises(FailedError, match="control plane"):
                await impostor.copies()
            with pytest.raises(FailedError, match="control plane"):
                await impostor.fill(drive, GENERATION, len(data), pieces_of(data))
            assert not any(name.startswith(drive) for name in files_in(directory))
        finally:
            await impostor.close()

    asyncio.run(scenario())


def test_a_malformed_cache_call_is_refused(agent_a: AgentProcess, cluster: Cluster) -> None:
    async def scenario() -> None:
        cache = cache_of(agent_a, cluster)
        try:
            with pytest.raises(UsageError, match="malformed cache call"):
                await cache.lookup("not-a-uuid", GENERATION)
            with pytest.raises(UsageError, match="malformed cache call"):
                await cache.remove(str(uuid.uuid4()), "../../etc/passwd")
            with pytest.raises(UsageError, match="malformed cache call"):
                await cache.fill("../x", GENERATION, 3, pieces_of(b"abc"))
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_an_agent_that_does_not_answer_is_a_503_naming_its_host(cluster: Cluster) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:  # a port nobody listens on
            taken.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            context = control_context(cluster.control)
            cache = RemoteImageCache(RemoteDriveStorage(HostConnection("hv-a", address, context)))
            try:
                with pytest.raises(UnavailableError, match="hv-a"):
                    await cache.lookup(str(uuid.uuid4()), GENERATION)
                with pytest.raises(UnavailableError, match="hv-a"):
                    await cache.fill(str(uuid.uuid4()), GENERATION, 3 * MIB, pieces_of(image()))
            finally:
                await cache.close()

    asyncio.run(scenario())
