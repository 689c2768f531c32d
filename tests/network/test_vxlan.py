"""A VLAN's VNI, the `network.vxlan_*` settings, and the link names of bridge mode with VXLAN
(the devices themselves: tests/integration/test_vxlan_networking.py)."""

import dataclasses
import uuid
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from openhosting.config import ConfigError, NetworkSettings, load_config
from openhosting.network import open_network
from openhosting.network.vxlan import VNI_COUNT, Underlay, UnderlayError, parse_underlay, vni_of

VLAN = "3a9c6b52-1d7e-4f08-a2b3-c4d5e6f7a8b9"
ON = NetworkSettings(mode="bridge", vxlan_local="198.18.0.1", vxlan_peers="198.18.0.2")


def test_a_vni_is_24_bits_never_0_and_the_same_for_any_spelling_of_the_uuid() -> None:
    vnis = {vni_of(str(uuid.uuid4())) for _ in range(2000)}
    assert all(0 < vni < VNI_COUNT for vni in vnis)
    assert len(vnis) > 1990  # spread over the 2^24 values (a collision or two is the odds)
    assert vni_of(VLAN) == vni_of(VLAN.upper()) == vni_of(VLAN.replace("-", ""))
    assert vni_of(VLAN) == 5022003  # every host and every release must agree


def test_vxlan_is_off_without_a_local_address() -> None:
    assert parse_underlay(NetworkSettings()) is None


def test_the_underlay_settings_parse() -> None:
    settings = dataclasses.replace(ON, vxlan_peers=" 198.18.0.2  198.18.0.3 198.18.0.2 ")
    assert parse_underlay(dataclasses.replace(settings, vxlan_device="eth1")) == Underlay(
        local=IPv4Address("198.18.0.1"),
        port=4789,
        device="eth1",
        peers=(IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vxlan_local": "", "vxlan_peers": "198.18.0.2"}, "need network.vxlan_local"),
        ({"vxlan_local": "host-1"}, "not an IPv4 address"),
        ({"vxlan_local": "127.0.0.1"}, "not a host's unicast address"),
        ({"vxlan_peers": "239.1.1.1"}, "not a host's unicast address"),
        ({"vxlan_peers": "198.18.0.2 198.18.0.1"}, "own address"),
        ({"vxlan_port": 0}, "not a UDP port"),
        ({"vxlan_port": 65536}, "not a UDP port"),
        ({"vxlan_device": "a/b"}, "vxlan_device"),
    ],
)
def test_bad_underlay_settings_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(UnderlayError, match=message):
        parse_underlay(dataclasses.replace(ON, **change))  # type: ignore[arg-type]


def test_bad_underlay_settings_stop_the_daemon_at_its_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vxlan_peers"):
        open_network(dataclasses.replace(ON, vxlan_peers="nowhere"), tmp_path)


@pytest.mark.parametrize("prefix", ["", "oh-xxxxxxxx", "oh-t", "oh-", "oh-vx"])
def test_a_vxlan_prefix_that_is_empty_too_long_or_meets_another_is_refused(
    prefix: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        open_network(dataclasses.replace(ON, vxlan_prefix=prefix), tmp_path)


def test_the_settings_come_from_the_network_section(tmp_path: Path) -> None:
    path = tmp_path / "openhosting.toml"
    path.write_text('[network]\nvxlan_local = "198.18.0.1"\nvxlan_peers = "198.18.0.2"\n')
    config = load_config(path, env={"OH_NETWORK_VXLAN_PORT": "8472"})
    assert (config.network.vxlan_local, config.network.vxlan_port) == ("198.18.0.1", 8472)


def test_a_vlan_has_a_bridge_and_a_vxlan_device_of_its_own_names(tmp_path: Path) -> None:
    _, driver = open_network(ON, tmp_path)
    names = {driver.vlan_bridge(VLAN), driver.vxlan_device(VLAN)}  # type: ignore[attr-defined]
    assert names == {"oh-v3a9c6b521d7", "oh-x3a9c6b521d7"}
