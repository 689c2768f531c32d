"""User mode's pure parts: what passt offers each guest, its command line, the fence's rules."""

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from openhosting.network.driver import NicPlan
from openhosting.network.guest_fence import fence_ruleset, table_name
from openhosting.network.passt import PasstFiles, build_passt_argv
from openhosting.network.pool import AddressPool
from openhosting.network.user_mode import DEFAULT_ADDRESSING, UserNetwork

SERVER = "0f962616-2071-4173-be79-7dd084271edf"
POOL = AddressPool.parse("192.0.2.0/24", "192.0.2.1", "192.0.2.1", "192.0.2.10-192.0.2.20")


def network() -> UserNetwork:
    return UserNetwork(POOL, Path("/run/oh/network"))


def test_a_nic_without_an_address_gets_what_qemus_user_mode_gave() -> None:
    addressing = network().addressing(NicPlan(SERVER, 0, "52:54:00:00:00:01"))
    assert addressing == DEFAULT_ADDRESSING
    assert (addressing.address, addressing.gateway, addressing.dns) == (
        IPv4Address("10.0.2.15"), IPv4Address("10.0.2.2"), IPv4Address("10.0.2.3"),
    )  # fmt: skip


def test_a_nic_with_an_ip_resource_gets_it_behind_the_pools_gateway_with_its_own_dns() -> None:
    addressing = network().addressing(NicPlan(SERVER, 1, "52:54:00:00:00:02", address="192.0.2.12"))
    assert addressing.address == IPv4Address("192.0.2.12")
    assert addressing.network == IPv4Network("192.0.2.0/24")
    assert addressing.gateway == IPv4Address("192.0.2.1")
    # The pool's name server is its gateway: the name server needs an address of its own.
    assert addressing.dns not in (addressing.address, addressing.gateway)
    assert addressing.dns in addressing.network


def test_passt_never_maps_the_gateway_to_the_host_and_ends_with_its_vm() -> None:
    files = PasstFiles(Path("/run/oh/network/passt"), SERVER, 0)
    argv = build_passt_argv(files, DEFAULT_ADDRESSING, "nobody")
    assert argv[0] == "passt"
    for flag in ("--no-map-gw", "--one-off", "--ipv4-only"):
        assert flag in argv
    assert argv[argv.index("--socket") + 1] == f"/run/oh/network/passt/{SERVER}-0.sock"
    assert argv[argv.index("--pid") + 1] == f"/run/oh/network/passt/{SERVER}-0.pid"
    assert argv[argv.index("--address") + 1] == "10.0.2.15"
    assert argv[argv.index("--netmask") + 1] == "24"
    assert argv[argv.index("--gateway") + 1] == "10.0.2.2"
    # DNS: the guest asks 10.0.2.3, which passt forwards to the host's resolver.
    assert argv[argv.index("--dns") + 1] == argv[argv.index("--dns-forward") + 1] == "10.0.2.3"
    assert argv[-2:] == ["--runas", "nobody"]
    # No port forwarded inbound: a user-mode guest's ports are all closed (nic:N:block).
    assert argv[argv.index("--tcp-ports") + 1] == argv[argv.index("--udp-ports") + 1] == "none"
    assert "--runas" not in build_passt_argv(files, DEFAULT_ADDRESSING, None)


def test_a_passt_socket_path_must_fit_a_unix_socket() -> None:
    files = PasstFiles(Path("/run/" + "x" * 80), SERVER, 0)
    with pytest.raises(ValueError, match="too long"):
        build_passt_argv(files, DEFAULT_ADDRESSING, None)


def test_the_fence_refuses_passts_account_new_flows_to_the_host_itself_but_dns() -> None:
    rules = fence_ruleset("openhosting_guests_x", 65534)
    assert "table inet openhosting_guests_x {" in rules
    assert "type filter hook output priority 0; policy accept;" in rules
    assert "meta skuid 65534 ct state new th dport != 53 fib daddr type local reject" in rules
    assert 'meta skuid 65534 ct state new oif "lo" th dport != 53 reject' in rules
    # Loaded again, it replaces the table rather than adding a second rule.
    assert rules.index("delete table inet openhosting_guests_x") < rules.index("chain output")


def test_each_platform_has_its_own_fence_table() -> None:
    one, two = table_name(Path("/run/a/network/passt")), table_name(Path("/run/b/network/passt"))
    assert one != two and one.startswith("openhosting_guests_")
    assert one == table_name(Path("/run/a/network/passt"))


def test_a_nic_without_nic_dhcp_is_offered_no_address_by_passt() -> None:
    silent = network().addressing(NicPlan(SERVER, 0, "52:54:00:00:00:01", dhcp=False))
    assert silent.dhcp is False
    files = PasstFiles(Path("/run/oh/network/passt"), SERVER, 0)
    assert "--no-dhcp" in build_passt_argv(files, silent, None)
    # nic:0:dhcp auto (or an IP resource): passt's DHCP answers.
    assert "--no-dhcp" not in build_passt_argv(files, DEFAULT_ADDRESSING, None)
    offered = network().addressing(NicPlan(SERVER, 0, "52:54:00:00:00:01", address="192.0.2.12"))
    assert "--no-dhcp" not in build_passt_argv(files, offered, None)
