"""The DHCP server's command line and entries, without running it (the real dnsmasq runs in
tests/integration/test_bridge_driver.py)."""

from pathlib import Path

import pytest

from openhosting.network.dnsmasq import (
    DhcpServer,
    DhcpSpec,
    build_dnsmasq_argv,
    host_entry,
    parse_host_entry,
    stale_leases,
)
from openhosting.network.errors import NetworkError
from openhosting.network.pool import AddressPool

POOL = AddressPool.parse("192.0.2.0/24", "192.0.2.1", "192.0.2.53", "192.0.2.10-192.0.2.20")
MAC_A, MAC_B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"


def spec(tmp_path: Path, namespace: str = "") -> DhcpSpec:
    return DhcpSpec("oh-public", tmp_path / "dhcp", POOL, 600, namespace, "/usr/sbin/dnsmasq")


def test_dnsmasq_serves_dhcp_only_on_its_bridge_and_only_to_known_hosts(tmp_path: Path) -> None:
    argv = build_dnsmasq_argv(spec(tmp_path))
    assert argv[0] == "/usr/sbin/dnsmasq"
    for option in (
        "--conf-file=/dev/null",
        "--port=0",
        "--bind-interfaces",
        "--interface=oh-public",
        "--except-interface=lo",
        f"--pid-file={tmp_path}/dhcp/dnsmasq.pid",
        f"--dhcp-hostsdir={tmp_path}/dhcp/hosts",
        f"--dhcp-leasefile={tmp_path}/dhcp/leases",
        "--dhcp-range=192.0.2.0,static,255.255.255.0,600",
        "--dhcp-option=option:router,192.0.2.1",
        "--dhcp-option=option:dns-server,192.0.2.53",
        "--dhcp-ignore=tag:!known",  # other hosts' guests on the provider's L2
    ):
        assert option in argv
    assert build_dnsmasq_argv(spec(tmp_path)) == argv  # same spec, same command line


def test_in_a_namespace_dnsmasq_is_started_through_ip_netns_exec(tmp_path: Path) -> None:
    argv = build_dnsmasq_argv(spec(tmp_path, "oh-test"))
    assert argv[:5] == ["ip", "netns", "exec", "oh-test", "/usr/sbin/dnsmasq"]


def test_host_entries_round_trip() -> None:
    assert host_entry(MAC_A, "192.0.2.10") == f"{MAC_A},192.0.2.10\n"
    assert parse_host_entry(host_entry(MAC_A, "192.0.2.10")) == (MAC_A, "192.0.2.10")
    assert parse_host_entry("garbage") is None


def test_only_leases_of_the_address_held_by_another_mac_are_stale() -> None:
    leases = (
        f"1700000000 {MAC_A} 192.0.2.10 * 01:{MAC_A}\n1700000000 {MAC_B} 192.0.2.11 * 01:{MAC_B}\n"
    )
    assert stale_leases(leases, "192.0.2.10", MAC_B) == [leases.splitlines()[0]]
    assert stale_leases(leases, "192.0.2.10", MAC_A) == []
    assert stale_leases(leases, "192.0.2.12", MAC_A) == []


def test_entries_are_files_in_the_hosts_directory(tmp_path: Path) -> None:
    server = DhcpServer(spec(tmp_path))
    assert server.entries() == {}
    server.spec.hosts_dir.mkdir(parents=True)
    (server.spec.hosts_dir / "one").write_text(host_entry(MAC_A, "192.0.2.10"))
    (server.spec.hosts_dir / ".two.tmp").write_text(host_entry(MAC_B, "192.0.2.11"))
    assert server.entries() == {"one": (MAC_A, "192.0.2.10")}  # half-written files are not
    server.remove_entry("one")  # no dnsmasq runs: nothing to signal
    assert server.entries() == {}
    assert server.pid() is None
    with pytest.raises(NetworkError):
        server.remove_entry("../escape")
