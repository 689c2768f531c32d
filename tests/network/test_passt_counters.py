"""User-mode NIC counters: the nftables table counting a passt's sockets by its cgroup, the
reading of its counters, and passt started inside its cgroup (pure parts; the real kernel
counting is tested with a real guest in tests/integration/test_guest_isolation.py)."""

import json
from pathlib import Path

from openhosting.network.links import Counters
from openhosting.network.passt import PasstFiles, in_cgroup
from openhosting.network.passt_counters import (
    cgroup_v2_root,
    counter_ruleset,
    parse_counters,
    platform_tag,
    table_name,
)

SERVER = "0b5c2a9e-6a4f-4c1e-9d8b-3f2e1a0c9b7d"


def test_the_table_counts_output_as_the_guests_tx_and_input_as_its_rx_by_cgroup() -> None:
    text = counter_ruleset("openhosting_nic_t", "unified/openhosting-passt/x-0", 2)
    assert text.startswith("table inet openhosting_nic_t\ndelete table inet openhosting_nic_t\n")
    output, input_ = text.split("chain output")[1].split("chain input")
    assert "hook output" in output
    assert 'socket cgroupv2 level 2 "unified/openhosting-passt/x-0" counter name "tx"' in output
    assert "hook input" in input_
    assert 'socket cgroupv2 level 2 "unified/openhosting-passt/x-0" counter name "rx"' in input_
    assert "policy accept" in output and "policy accept" in input_  # counts, never filters


def test_counters_are_read_from_nfts_json_listing() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "t"}},
        {"counter": {"family": "inet", "table": "t", "name": "rx", "packets": 40,
                     "bytes": 65000}},
        {"counter": {"family": "inet", "table": "t", "name": "tx", "packets": 30,
                     "bytes": 2100}},
    ]}  # fmt: skip
    assert parse_counters(json.dumps(listing)) == Counters(
        rx_bytes=65000, tx_bytes=2100, rx_packets=40, tx_packets=30
    )
    assert parse_counters("") == Counters()


def test_each_nic_of_each_platform_has_its_own_table() -> None:
    tag = platform_tag(Path("/run/a/network/passt"))
    assert tag != platform_tag(Path("/run/b/network/passt"))
    first = table_name(tag, PasstFiles(Path("/x"), SERVER, 0))
    second = table_name(tag, PasstFiles(Path("/x"), SERVER, 1))
    assert first != second and first.startswith("openhosting_nic_") and "-" not in first


def test_passt_joins_its_cgroup_before_it_runs() -> None:
    argv = in_cgroup(["passt", "--socket", "/s"], Path("/sys/fs/cgroup/g/cgroup.procs"))
    assert argv[:3] == ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"']
    assert argv[3:] == ["/sys/fs/cgroup/g/cgroup.procs", "passt", "--socket", "/s"]


def test_the_cgroup_v2_hierarchy_is_found_on_v2_and_hybrid_hosts_only(tmp_path: Path) -> None:
    assert cgroup_v2_root(tmp_path) is None  # cgroup v1 only
    unified = tmp_path / "unified"
    unified.mkdir()
    for name in ("cgroup.procs", "cgroup.stat"):
        (unified / name).touch()
    assert cgroup_v2_root(tmp_path) == unified
    for name in ("cgroup.procs", "cgroup.stat"):
        (tmp_path / name).touch()
    assert cgroup_v2_root(tmp_path) == tmp_path
