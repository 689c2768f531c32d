"""Placement (services/cluster/placement.py): where a new drive or a starting server goes, over many
hosts; refusals name what is short."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openhosting.errors import FullError
from openhosting.host_capacity import HostCapacity
from openhosting.services.cluster.placement import (
    GIB,
    DriveRequest,
    HostLoad,
    ServerRequest,
    place_drive,
    place_server,
    size_text,
)


def host(
    name: str,
    disk_gib: int = 100,
    used_gib: int = 0,
    tier: str = "disk",
    cores: int = 4,
    memory_mb: int = 8192,
    used_mhz: int = 0,
    used_mb: int = 0,
) -> HostLoad:
    return HostLoad(
        name=name,
        capacity=HostCapacity(
            cores=cores,
            core_mhz=2000,
            memory_mb=memory_mb,
            disk_bytes_by_tier={tier: disk_gib * GIB},
        ),
        used_mhz=used_mhz,
        used_memory_mb=used_mb,
        used_bytes_by_tier={tier: used_gib * GIB},
    )


# -- drives --------------------------------------------------------------------------------

DRIVE_CASES = [
    # (hosts, request, expected host)
    pytest.param(
        [host("a"), host("b", used_gib=10)], DriveRequest(GIB, "disk"), "a", id="most-room"
    ),
    pytest.param([host("b"), host("a")], DriveRequest(GIB, "disk"), "a", id="tie-first-name"),
    pytest.param(
        [host("a", disk_gib=5), host("b", disk_gib=50, used_gib=40)],
        DriveRequest(8 * GIB, "disk"),
        "b",
        id="only-one-has-room",
    ),
    pytest.param(
        [host("a", disk_gib=200), host("b")],
        DriveRequest(GIB, "disk", {"d1": "a"}),
        "b",
        id="avoid-skips-the-roomiest",
    ),
    pytest.param(
        [host("a"), host("b"), host("c", disk_gib=10)],
        DriveRequest(GIB, "disk", {"d1": "a", "d2": "b"}),
        "c",
        id="avoid-two-hosts",
    ),
    pytest.param(
        [host("a", tier="ssd", disk_gib=10), host("b", disk_gib=500)],
        DriveRequest(2 * GIB, "ssd"),
        "a",
        id="tier-only-on-one-host",
    ),
    pytest.param(
        [host("a", disk_gib=1, used_gib=5)],
        DriveRequest(100 * GIB, "disk", {"d1": "a"}),
        "a",
        id="one-host-no-choice-as-before",
    ),
    pytest.param(
        [host("a", disk_gib=10, used_gib=10), host("b", disk_gib=10, used_gib=9)],
        DriveRequest(GIB, "disk"),
        "b",
        id="exactly-full",
    ),
]


@pytest.mark.parametrize(("hosts", "request_", "expected"), DRIVE_CASES)
def test_a_drive_goes_to_a_host_with_room_in_its_tier_apart_from_avoid(
    hosts: list[HostLoad], request_: DriveRequest, expected: str
) -> None:
    assert place_drive(request_, hosts) == expected


REFUSED_DRIVES = [
    pytest.param(
        [host("a", disk_gib=10), host("b", disk_gib=10, used_gib=5)],
        DriveRequest(20 * GIB, "ssd"),
        "No host has 20 GiB free in tier ssd",
        id="no-tier-anywhere",
    ),
    pytest.param(
        [host("a", disk_gib=10), host("b", disk_gib=30, used_gib=15)],
        DriveRequest(20 * GIB, "disk"),
        "No host has 20 GiB free in tier disk",
        id="no-room",
    ),
    pytest.param(
        [host("a"), host("b", disk_gib=1)],
        DriveRequest(2 * GIB, "disk", {"d9": "a"}),
        "No host has 2 GiB free in tier disk apart from the drives named in avoid (d9)",
        id="room-only-beside-avoided",
    ),
]


@pytest.mark.parametrize(("hosts", "request_", "message"), REFUSED_DRIVES)
def test_no_host_with_room_is_full_naming_what_is_short(
    hosts: list[HostLoad], request_: DriveRequest, message: str
) -> None:
    with pytest.raises(FullError) as raised:
        place_drive(request_, hosts)
    assert str(raised.value) == message
    assert raised.value.status == 507


def test_no_host_at_all_is_full() -> None:
    with pytest.raises(FullError, match="none is registered"):
        place_drive(DriveRequest(1, "disk"), [])
    with pytest.raises(FullError, match="none is registered"):
        place_server(ServerRequest(1000, 256), [])


def test_sizes_read_as_an_operator_reads_them() -> None:
    assert size_text(20 * GIB) == "20 GiB"
    assert size_text(512 << 20) == "512 MiB"
    assert size_text(GIB + 1) == "1.0 GiB"
    assert size_text(1000) == "1000 bytes"


TIERS = ("disk", "ssd")
hosts_strategy = st.lists(
    st.builds(
        HostLoad,
        name=st.sampled_from([f"h{i}" for i in range(8)]),
        capacity=st.builds(
            HostCapacity,
            cores=st.integers(1, 64),
            core_mhz=st.integers(500, 4000),
            memory_mb=st.integers(0, 1 << 20),
            disk_bytes_by_tier=st.dictionaries(st.sampled_from(TIERS), st.integers(0, 1 << 44)),
        ),
        used_mhz=st.integers(0, 1 << 18),
        used_memory_mb=st.integers(0, 1 << 20),
        used_bytes_by_tier=st.dictionaries(st.sampled_from(TIERS), st.integers(0, 1 << 44)),
    ),
    min_size=2,
    max_size=8,
    unique_by=lambda load: load.name,
)


@settings(max_examples=300, deadline=None)
@given(
    hosts=hosts_strategy,
    size=st.integers(1, 1 << 43),
    tier=st.sampled_from(TIERS),
    avoided=st.lists(st.integers(0, 7), max_size=4),
)
def test_drive_placement_never_overfills_never_ignores_avoid_and_is_deterministic(
    hosts: list[HostLoad], size: int, tier: str, avoided: list[int]
) -> None:
    avoid = {f"d{i}": f"h{i}" for i in avoided}
    request = DriveRequest(size, tier, avoid)
    try:
        chosen = place_drive(request, hosts)
    except FullError:
        # Refused only when no host outside avoid has the room.
        assert not any(h.free_bytes(tier) >= size and h.name not in avoid.values() for h in hosts)
        return
    by_name = {h.name: h for h in hosts}
    assert by_name[chosen].free_bytes(tier) >= size
    assert chosen not in avoid.values()
    best = max(h.free_bytes(tier) for h in hosts if h.name not in avoid.values())
    assert by_name[chosen].free_bytes(tier) == best
    reordered = list(reversed(hosts))
    assert place_drive(request, reordered) == chosen


# -- servers -------------------------------------------------------------------------------

SERVER_CASES = [
    pytest.param(
        [host("a", memory_mb=65536), host("b", memory_mb=2048)],
        ServerRequest(1000, 1024, boot_host="b"),
        "b",
        id="boot-host-has-room",
    ),
    pytest.param(
        [host("a"), host("b", memory_mb=2048, used_mb=1536)],
        ServerRequest(1000, 1024, boot_host="b"),
        "a",
        id="boot-host-short-of-mem",
    ),
    pytest.param(
        [host("a"), host("b", cores=1, used_mhz=1500)],
        ServerRequest(1000, 256, boot_host="b"),
        "a",
        id="boot-host-short-of-cpu",
    ),
    pytest.param(
        [host("b", memory_mb=4096), host("a", memory_mb=8192), host("c", memory_mb=8192)],
        ServerRequest(1000, 256),
        "a",
        id="no-boot-drive-most-mem-first-name",
    ),
    pytest.param(
        [host("a", memory_mb=128)],
        ServerRequest(64000, 4096, boot_host="a"),
        "a",
        id="one-host-no-choice-as-before",
    ),
]


@pytest.mark.parametrize(("hosts", "request_", "expected"), SERVER_CASES)
def test_a_server_goes_to_its_boot_drives_host_when_it_has_capacity(
    hosts: list[HostLoad], request_: ServerRequest, expected: str
) -> None:
    assert place_server(request_, hosts) == expected


def test_a_server_no_host_can_hold_is_full_naming_cpu_and_mem() -> None:
    hosts = [host("a", cores=1), host("b", memory_mb=512)]
    with pytest.raises(FullError) as raised:
        place_server(ServerRequest(3000, 1024, boot_host="a"), hosts)
    assert str(raised.value) == "No host has 3000 MHz of cpu and 1024 MiB of mem free"


@settings(max_examples=300, deadline=None)
@given(
    hosts=hosts_strategy,
    cpu=st.integers(1, 1 << 17),
    mem=st.integers(1, 1 << 19),
    boot=st.one_of(st.none(), st.sampled_from([f"h{i}" for i in range(8)])),
)
def test_server_placement_never_overcommits_and_prefers_the_boot_host(
    hosts: list[HostLoad], cpu: int, mem: int, boot: str | None
) -> None:
    request = ServerRequest(cpu, mem, boot)
    fits = {h.name for h in hosts if h.free_mhz >= cpu and h.free_memory_mb >= mem}
    try:
        chosen = place_server(request, hosts)
    except FullError:
        assert not fits
        return
    assert chosen in fits
    if boot in fits:
        assert chosen == boot
    assert place_server(request, list(reversed(hosts))) == chosen
