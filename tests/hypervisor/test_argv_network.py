"""The network parts of the QEMU command line: user-mode addressing, taps, namespaces."""

from pathlib import Path

import pytest

from openhosting.hypervisor.argv import build_qemu_argv
from openhosting.hypervisor.spec import (
    NicSpec,
    StreamNetdev,
    TapNetdev,
    UserNetdev,
    VmSpec,
)

UUID = "0f962616-2071-4173-be79-7dd084271edf"
MAC = "52:54:00:12:34:56"


def spec(**changes: object) -> VmSpec:
    return VmSpec(uuid=UUID, smp=1, mem_mb=256, run_dir=Path("/run/oh/x"), **changes)


def test_plain_user_mode_has_no_addressing_options() -> None:
    argv = build_qemu_argv(spec(nics=(NicSpec(0, "e1000", MAC),)))
    assert "user,id=net0" in argv
    assert f"e1000,netdev=net0,mac={MAC},id=nic-0" in argv


def test_user_mode_can_give_the_guest_a_chosen_address() -> None:
    backend = UserNetdev(
        net="192.0.2.0/24", host="192.0.2.1", dhcp_start="192.0.2.57", dns="192.0.2.2"
    )
    argv = build_qemu_argv(spec(nics=(NicSpec(0, "virtio", MAC, backend),)))
    assert "user,id=net0,net=192.0.2.0/24,host=192.0.2.1,dhcpstart=192.0.2.57,dns=192.0.2.2" in argv


def test_a_tap_nic_runs_no_scripts() -> None:
    argv = build_qemu_argv(spec(nics=(NicSpec(1, "rtl8139", MAC, TapNetdev("oh-tabc1")),)))
    assert "tap,id=net1,ifname=oh-tabc1,script=no,downscript=no" in argv


def test_a_stream_nic_connects_to_its_helpers_unix_socket() -> None:
    backend = StreamNetdev(Path("/run/oh/network/passt/x-0.sock"))
    argv = build_qemu_argv(spec(nics=(NicSpec(0, "virtio", MAC, backend),)))
    netdev = "stream,id=net0,server=off,addr.type=unix,addr.path=/run/oh/network/passt/x-0.sock"
    assert argv[argv.index(netdev) - 1] == "-netdev"
    assert f"virtio-net-pci,netdev=net0,mac={MAC},id=nic-0" in argv


def test_a_stream_socket_path_must_fit_a_unix_socket() -> None:
    with pytest.raises(ValueError, match="too long"):
        StreamNetdev(Path("/run/" + "x" * 110))


def test_in_a_namespace_qemu_is_started_through_ip_netns_exec() -> None:
    plain = build_qemu_argv(spec())
    inside = build_qemu_argv(spec(netns="oh-test-1"))
    assert inside == ["ip", "netns", "exec", "oh-test-1", *plain]
    assert build_qemu_argv(spec(netns=None)) == plain


@pytest.mark.parametrize("name", ["", "../x", "a b", "-n", "x" * 65])
def test_unusable_namespace_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="network namespace"):
        spec(netns=name)
