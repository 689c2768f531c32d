"""Link commands and `ip -j -s link` parsing, without touching the host."""

import json

import pytest

from openhosting.network.errors import NetworkError
from openhosting.network.links import (
    LINK_MARKER,
    Counters,
    check_ifname,
    ip_argv,
    netns_exec_argv,
    parse_links,
)


def test_ip_commands_name_the_namespace_when_there_is_one() -> None:
    assert ip_argv("", "link", "show") == ["ip", "link", "show"]
    assert ip_argv("oh-ns", "link", "show") == ["ip", "-n", "oh-ns", "link", "show"]
    assert netns_exec_argv("", ["dnsmasq", "-k"]) == ["dnsmasq", "-k"]
    assert netns_exec_argv("oh-ns", ["dnsmasq"]) == ["ip", "netns", "exec", "oh-ns", "dnsmasq"]


def test_links_are_read_with_their_master_marker_and_counters() -> None:
    text = json.dumps(
        [
            {"ifname": "lo"},
            {"ifname": "oh-public", "ifalias": LINK_MARKER},
            {
                "ifname": "oh-t0123456780",
                "master": "oh-public",
                "ifalias": LINK_MARKER,
                "stats64": {
                    "rx": {"bytes": 100, "packets": 2},
                    "tx": {"bytes": 3000, "packets": 40},
                },
            },
        ]
    )
    links = parse_links(text)
    assert set(links) == {"lo", "oh-public", "oh-t0123456780"}
    assert not links["lo"].ours and links["oh-public"].ours
    tap = links["oh-t0123456780"]
    assert tap.master == "oh-public"
    assert (tap.counters.rx_bytes, tap.counters.rx_packets) == (100, 2)
    assert (tap.counters.tx_bytes, tap.counters.tx_packets) == (3000, 40)
    assert parse_links("") == {}


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b"])
def test_unusable_interface_names_are_refused(name: str) -> None:
    with pytest.raises(NetworkError):
        check_ifname(name)
    assert check_ifname("a" * 15) == "a" * 15


def test_counters_add_up_and_turn_round_at_the_other_end_of_a_link() -> None:
    tap = Counters(rx_bytes=1, tx_bytes=20, rx_packets=300, tx_packets=4000)
    assert tap.seen_from_the_other_end() == Counters(20, 1, 4000, 300)
    assert tap + Counters(5, 6, 7, 8) == Counters(6, 26, 307, 4008)
    assert Counters() + tap == tap
