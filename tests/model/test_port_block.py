"""`nic:N:block` values: the syntax of the real service's bodies, ranges, both protocols, and a
usage error naming the key and the entry for anything else."""

import pytest

from openhosting.errors import UsageError
from openhosting.model.port_block import (
    MAX_ENTRIES,
    BlockedPorts,
    format_block_list,
    parse_block_list,
    port_intervals,
)

SAMPLE = (  # tests/data/samples/server2.txt
    "tcp/43594 tcp/5902 udp/5060 tcp/5900 tcp/5901 tcp/21 tcp/22 tcp/23 tcp/25 tcp/110 tcp/143"
    " tcp/43595"
)


def test_the_real_services_list_reads_back_as_it_was_sent() -> None:
    entries = parse_block_list(SAMPLE, "nic:0:block")
    assert entries[0] == BlockedPorts("tcp", 43594, 43594)
    assert entries[2] == BlockedPorts("udp", 5060, 5060)
    assert format_block_list(entries) == SAMPLE


def test_bare_ports_and_ranges_block_both_protocols() -> None:
    entries = parse_block_list("25 8000-8100 udp/53 TCP/10-20", "nic:0:block")
    assert entries == (
        BlockedPorts(None, 25, 25),
        BlockedPorts(None, 8000, 8100),
        BlockedPorts("udp", 53, 53),
        BlockedPorts("tcp", 10, 20),
    )
    assert format_block_list(entries) == "25 8000-8100 udp/53 tcp/10-20"
    assert [e.covers("tcp") for e in entries] == [True, True, False, True]


def test_repeats_are_dropped_and_the_order_kept() -> None:
    entries = parse_block_list("tcp/22  udp/53 tcp/22\t80 ", "nic:1:block")
    assert format_block_list(entries) == "tcp/22 udp/53 80"
    assert parse_block_list("", "nic:0:block") == ()


@pytest.mark.parametrize(
    "entry",
    ["tcp/0", "65536", "tcp/99999", "icmp/8", "sctp/22", "tcp/", "/22", "22-", "-22",
     "100-90", "tcp/22/23", "ssh", "22,23", "tcp:22", "1-65536", "tcp/123456"],
)  # fmt: skip
def test_a_bad_entry_is_a_usage_error_naming_the_key_and_the_entry(entry: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_block_list(f"tcp/22 {entry} udp/53", "nic:0:block")
    message = caught.value.message
    assert message.startswith("nic:0:block: ") and repr(entry) in message


def test_a_list_is_bounded() -> None:
    many = " ".join(str(port) for port in range(1, MAX_ENTRIES + 2))
    with pytest.raises(UsageError, match="at most"):
        parse_block_list(many, "nic:0:block")
    assert len(parse_block_list(many.rsplit(" ", 1)[0], "nic:0:block")) == MAX_ENTRIES


def test_intervals_per_protocol_are_sorted_merged_and_disjoint() -> None:
    entries = parse_block_list("tcp/25 8000-8100 tcp/8050-9000 udp/53 24 tcp/26 65535", "k")
    assert port_intervals(entries, "tcp") == [(24, 26), (8000, 9000), (65535, 65535)]
    assert port_intervals(entries, "udp") == [(24, 24), (53, 53), (8000, 8100), (65535, 65535)]
    assert port_intervals((), "tcp") == []
