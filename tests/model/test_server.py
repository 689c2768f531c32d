"""The server configuration: every rule of docs/api.md §5, and the real request bodies."""

import re

import pytest

from openhosting.errors import UsageError
from openhosting.model.server import (
    DriveAttachment,
    NicConfig,
    ServerConfig,
    is_slot,
    slot_sort_key,
)
from tests.conftest import SAMPLES

DRIVE = "08c92dd5-70a0-4f51-83d2-835919d254df"
DRIVE2 = "4af85ed3-0caa-4736-8a26-a33d7de0a122"
VLAN = "0f962616-2071-4173-be79-7dd084271edf"
MINIMAL = {"name": "web", "cpu": "2000", "mem": "1024"}


def parse(**extra: str) -> ServerConfig:
    return ServerConfig.from_properties({**MINIMAL, **extra})


def parse_keys(props: dict[str, str]) -> ServerConfig:
    return ServerConfig.from_properties({**MINIMAL, **props})


def usage_message(props: dict[str, str]) -> str:
    with pytest.raises(UsageError) as caught:
        parse_keys(props)
    return caught.value.message


def read_sample(name: str) -> dict[str, str]:
    text = (SAMPLES / name).read_text()
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip())


def test_the_jclouds_create_body_parses() -> None:
    config = ServerConfig.from_properties(read_sample("create_server.txt"))
    assert config.name == "TestServer"
    assert (config.cpu, config.smp, config.smp_cores, config.mem) == (2000, None, 1, 1024)
    assert config.persistent is False
    assert config.drives == (DriveAttachment("ide:0:0", DRIVE, "disk"),)
    assert config.boot == ("ide:0:0",)
    assert config.nics == (NicConfig(index=0, model="e1000"),)
    assert config.vnc_ip == "auto"
    assert config.vnc_password == "XXXXXXXX"


def test_the_seed_create_body_parses() -> None:
    config = parse_keys(
        {
            "ide:0:0": DRIVE,
            "boot": "ide:0:0",
            "nic:0:model": "e1000",
            "nic:0:dhcp": "auto",
            "vnc:ip": "auto",
            "vnc:password": "XXXXXXXX",
        }
    )
    assert config.nics[0].dhcp == "auto"


def test_a_minimal_configuration_has_defaults() -> None:
    config = parse()
    assert config == ServerConfig(name="web", cpu=2000, mem=1024)
    assert config.persistent is False and config.smp is None and config.drives == ()


@pytest.mark.parametrize("key", ["name", "cpu", "mem"])
def test_name_cpu_and_mem_are_required(key: str) -> None:
    props = dict(MINIMAL)
    del props[key]
    with pytest.raises(UsageError, match=f"^{key} is required"):
        ServerConfig.from_properties(props)


def test_an_unknown_key_is_a_usage_error_naming_it() -> None:
    assert "'colour'" in usage_message({"colour": "blue"})
    assert "'nic:2:block'" in usage_message({"nic:2:block": "tcp/22"})
    assert "'nic:2:model'" in usage_message({"nic:2:model": "e1000"})
    assert "'ide:2:0'" in usage_message({"ide:2:0": DRIVE})


@pytest.mark.parametrize("value", ["abc", "0", "64001", "-5", "2000.5", "1e3", ""])
def test_cpu_must_be_whole_mhz_in_range(value: str) -> None:
    if value == "":
        assert usage_message({"cpu": value}) == "cpu is required"
    else:
        assert usage_message({"cpu": value}).startswith("cpu must be a whole number of MHz")


def test_cpu_accepts_the_small_value_libcloud_sends_and_the_maximum() -> None:
    assert parse(cpu="2").cpu == 2
    assert parse(cpu="64000").cpu == 64000


@pytest.mark.parametrize("value", ["15", "262145", "1G", "x"])
def test_mem_must_be_whole_mb_in_range(value: str) -> None:
    assert usage_message({"mem": value}).startswith("mem must be a whole number of MB")


def test_smp_is_a_number_or_auto_derived_from_cpu() -> None:
    assert parse(smp="4").smp_cores == 4
    assert parse(smp="auto", cpu="2000").smp_cores == 1
    assert parse(smp="auto", cpu="2001").smp_cores == 2
    assert parse(cpu="8000").smp_cores == 4
    assert parse(cpu="64000").smp_cores == 32
    for bad in ("0", "65", "two"):
        assert usage_message({"smp": bad}).startswith("smp must be auto or a number")


def test_persistent_is_true_or_false() -> None:
    assert parse(persistent="true").persistent is True
    assert parse(persistent="false").persistent is False
    assert usage_message({"persistent": "yes"}).startswith("persistent must be one of")


@pytest.mark.parametrize(
    "slot",
    ["ide:0:0", "ide:0:1", "ide:1:0", "ide:1:1", "scsi:0:0", "scsi:0:7", "block:0", "block:7"],
)
def test_every_slot_takes_a_drive(slot: str) -> None:
    config = parse_keys({slot: DRIVE, "boot": slot})
    assert config.drive(slot) == DriveAttachment(slot, DRIVE, "disk")
    assert is_slot(slot)


@pytest.mark.parametrize(
    "slot", ["ide:0:2", "ide:2:0", "scsi:1:0", "scsi:0:8", "block:8", "virtio:0"]
)
def test_slots_outside_the_ranges_are_unknown_keys(slot: str) -> None:
    assert "unknown server configuration key" in usage_message({slot: DRIVE})
    assert not is_slot(slot)


def test_a_slot_holds_a_uuid_normalised_to_lowercase() -> None:
    assert parse_keys({"ide:0:0": DRIVE.upper()}).drives[0].drive == DRIVE
    assert usage_message({"ide:0:0": "not-a-uuid"}) == "ide:0:0 must be a UUID, not 'not-a-uuid'"


def test_media_is_disk_or_cdrom_and_needs_its_slot() -> None:
    config = parse_keys({"ide:1:0": DRIVE, "ide:1:0:media": "cdrom"})
    assert config.drives == (DriveAttachment("ide:1:0", DRIVE, "cdrom"),)
    assert usage_message({"ide:0:0": DRIVE, "ide:0:0:media": "tape"}).startswith(
        "ide:0:0:media must be one of disk, cdrom"
    )
    assert (
        usage_message({"ide:0:0:media": "disk"}) == "ide:0:0:media is set but ide:0:0 has no drive"
    )


def test_one_drive_cannot_be_in_two_slots() -> None:
    message = usage_message({"ide:0:0": DRIVE, "block:1": DRIVE})
    assert "ide:0:0" in message and "block:1" in message


def test_drives_are_ordered_by_bus_then_numbers() -> None:
    config = parse_keys({"block:0": DRIVE, "scsi:0:2": DRIVE2, "ide:1:0": VLAN})
    assert [d.slot for d in config.drives] == ["ide:1:0", "scsi:0:2", "block:0"]
    assert sorted(["block:1", "ide:1:1", "ide:0:1", "scsi:0:0"], key=slot_sort_key) == [
        "ide:0:1",
        "ide:1:1",
        "scsi:0:0",
        "block:1",
    ]


def test_boot_lists_configured_slots_in_order() -> None:
    config = parse_keys({"ide:0:0": DRIVE, "block:0": DRIVE2, "boot": "block:0 ide:0:0"})
    assert config.boot == ("block:0", "ide:0:0")
    assert usage_message({"boot": "ide:0:0"}) == "boot names ide:0:0, which has no drive"
    assert usage_message({"ide:0:0": DRIVE, "boot": "ide:0:0 ide:0:0"}) == (
        "boot lists ide:0:0 twice"
    )
    assert usage_message({"boot": "floppy"}).startswith("boot must list device slots")


def test_nic_models_and_addresses() -> None:
    config = parse_keys(
        {
            "nic:0:model": "virtio",
            "nic:0:dhcp": "192.0.2.10",
            "nic:0:mac": "52:54:00:AB:CD:EF",
            "nic:1:model": "rtl8139",
            "nic:1:vlan": VLAN,
            "nic:1:mac": "52:54:00:00:00:01",
        }
    )
    assert config.nics == (
        NicConfig(0, "virtio", mac="52:54:00:ab:cd:ef", dhcp="192.0.2.10"),
        NicConfig(1, "rtl8139", mac="52:54:00:00:00:01", vlan=VLAN),
    )
    assert usage_message({"nic:0:model": "ne2k"}).startswith(
        "nic:0:model must be one of e1000, rtl8139, virtio"
    )
    assert usage_message({"nic:0:model": "e1000", "nic:0:dhcp": "10.0.0.256"}).startswith(
        "nic:0:dhcp must be auto or an IPv4 address"
    )
    assert usage_message({"nic:1:model": "e1000", "nic:1:vlan": "vlan7"}).startswith(
        "nic:1:vlan must be a UUID"
    )


@pytest.mark.parametrize(
    "mac",
    [
        "52:54:00:12:34",
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "52-54-00-12-34-56",
        "zz:54:00:12:34:56",
    ],
)
def test_a_mac_must_be_unicast_and_colon_separated(mac: str) -> None:
    message = usage_message({"nic:0:model": "e1000", "nic:0:mac": mac})
    assert message.startswith("nic:0:mac must be a unicast MAC address")


def test_nic_settings_need_the_nic_model() -> None:
    assert usage_message({"nic:0:dhcp": "auto"}) == "nic:0:dhcp is set but nic:0:model is not"
    assert usage_message({"nic:1:vlan": VLAN}) == "nic:1:vlan is set but nic:1:model is not"
    assert "'nic:1:dhcp'" in usage_message({"nic:1:model": "e1000", "nic:1:dhcp": "auto"})
    assert "'nic:0:vlan'" in usage_message({"nic:0:model": "e1000", "nic:0:vlan": VLAN})


def test_vnc_settings_and_their_aliases() -> None:
    config = parse_keys({"vnc": "auto", "password": "secret12", "vnc:tls": "on"})
    assert (config.vnc_ip, config.vnc_password, config.vnc_tls) == ("auto", "secret12", True)
    assert parse(**{"vnc:ip": "192.0.2.1"}).vnc_ip == "192.0.2.1"
    assert parse(**{"vnc:tls": "off"}).vnc_tls is False
    assert usage_message({"vnc:ip": "here"}).startswith("vnc:ip must be auto or an IPv4 address")
    assert usage_message({"vnc:tls": "yes"}).startswith("vnc:tls must be one of on, off")


def test_the_vnc_password_is_at_most_eight_characters() -> None:
    assert parse(password="12345678").vnc_password == "12345678"
    assert usage_message({"vnc:password": "123456789"}) == (
        "vnc:password must be at most 8 characters"
    )
    assert usage_message({"password": "éééé5"}) == "vnc:password must be at most 8 characters"


def test_an_alias_and_its_key_must_agree() -> None:
    assert parse_keys({"password": "pw", "vnc:password": "pw"}).vnc_password == "pw"
    message = usage_message({"password": "a", "vnc:password": "b"})
    assert "password" in message and "vnc:password" in message


def test_tags_and_user_keys() -> None:
    config = parse_keys({"tags": " web  prod ", "user:note": "a\nb", "user:z": "1"})
    assert config.tags == ("web", "prod")
    assert config.user == (("note", "a\nb"), ("z", "1"))
    assert "'user:'" in usage_message({"user:": "x"})


def test_an_empty_value_leaves_an_optional_key_unset() -> None:
    assert parse_keys({"vnc:password": "", "tags": ""}) == parse()


def test_info_properties_show_both_password_forms_and_smp_cores() -> None:
    props = parse_keys(
        {
            "smp": "auto",
            "persistent": "true",
            "ide:0:0": DRIVE,
            "boot": "ide:0:0",
            "nic:0:model": "e1000",
            "nic:0:dhcp": "auto",
            "vnc": "auto",
            "password": "pw",
            "tags": "a b",
            "user:x": "y",
        }
    ).to_properties()
    assert props == {
        "name": "web",
        "cpu": "2000",
        "smp": "auto",
        "smp:cores": "1",
        "mem": "1024",
        "persistent": "true",
        "ide:0:0": DRIVE,
        "ide:0:0:media": "disk",
        "boot": "ide:0:0",
        "nic:0:model": "e1000",
        "nic:0:dhcp": "auto",
        "vnc:ip": "auto",
        "vnc:password": "pw",
        "password": "pw",
        "tags": "a b",
        "user:x": "y",
    }


def test_canonical_properties_round_trip() -> None:
    config = ServerConfig.from_properties(read_sample("create_server.txt"))
    assert ServerConfig.from_properties(config.canonical_properties()) == config
    assert "password" not in config.canonical_properties()


def test_merge_overrides_keys_and_keeps_the_rest() -> None:
    config = parse_keys({"ide:0:0": DRIVE, "boot": "ide:0:0", "password": "old"})
    merged = config.merge({"name": "x", "cpu": "2", "password": "new"})
    assert (merged.name, merged.cpu, merged.vnc_password) == ("x", 2, "new")
    assert merged.drives == config.drives and merged.boot == config.boot


def test_merge_with_an_empty_value_unsets_a_key_and_what_depends_on_it() -> None:
    config = parse_keys(
        {
            "ide:0:0": DRIVE,
            "ide:0:0:media": "cdrom",
            "nic:0:model": "e1000",
            "nic:0:dhcp": "auto",
            "user:a": "1",
        }
    )
    merged = config.merge({"ide:0:0": "", "nic:0:model": "", "user:a": ""})
    assert merged == parse()


def test_merge_validates_the_result() -> None:
    config = parse_keys({"ide:0:0": DRIVE, "boot": "ide:0:0"})
    with pytest.raises(UsageError, match="boot names ide:0:0, which has no drive"):
        config.merge({"ide:0:0": ""})
    with pytest.raises(UsageError, match="name is required"):
        config.merge({"name": ""})
    with pytest.raises(UsageError, match="unknown server configuration key 'server'"):
        config.merge({"server": "x"})


def test_offline_changes_are_those_a_running_server_cannot_take() -> None:
    config = parse_keys({"ide:0:0": DRIVE, "nic:0:model": "e1000", "vnc": "auto"})
    live = {
        "name": "x",
        "cpu": "1",
        "persistent": "true",
        "tags": "t",
        "password": "p",
        "user:k": "v",
    }
    assert config.offline_changes(live) == []
    assert config.offline_changes({"mem": "2048", "nic:0:model": "virtio"}) == [
        "mem",
        "nic:0:model",
    ]
    # Sending back an unchanged value (as clients that post the whole configuration do) is fine.
    assert config.offline_changes({"mem": "1024", "ide:0:0": DRIVE, "vnc": "auto"}) == []


INFO_ONLY = re.compile(r"server|user|status|started|rx|tx|.*:(bytes|requests|packets)|.*:dhcp:ip")


@pytest.mark.parametrize("name", ["new_server.txt", "server2.txt"])
def test_the_real_services_server_bodies_with_blocked_ports_parse_and_round_trip(
    name: str,
) -> None:
    sample = read_sample(name)
    config = ServerConfig.from_properties(
        {key: value for key, value in sample.items() if not INFO_ONLY.fullmatch(key)}
    )
    [nic] = config.nics
    assert [str(entry) for entry in nic.block][:3] == ["tcp/43594", "tcp/5902", "udp/5060"]
    props = config.canonical_properties()
    assert props["nic:0:block"] == sample["nic:0:block"]
    assert ServerConfig.from_properties(props) == config
    assert config.to_properties()["nic:0:block"] == sample["nic:0:block"]


def test_nic_block_is_per_nic_and_needs_the_nic() -> None:
    config = parse_keys(
        {"nic:0:model": "e1000", "nic:0:block": "tcp/22 25", "nic:1:model": "virtio",
         "nic:1:vlan": VLAN, "nic:1:block": "udp/53"}
    )  # fmt: skip
    assert [nic.index for nic in config.nics] == [0, 1]
    assert config.canonical_properties()["nic:0:block"] == "tcp/22 25"
    assert config.canonical_properties()["nic:1:block"] == "udp/53"
    assert usage_message({"nic:1:block": "tcp/22"}) == "nic:1:block is set but nic:1:model is not"
    assert "nic:0:block: 'tcp/70000'" in usage_message(
        {"nic:0:model": "e1000", "nic:0:block": "tcp/22 tcp/70000"}
    )
    # An empty list blocks nothing and is not stored.
    assert (
        "nic:0:block"
        not in parse_keys({"nic:0:model": "e1000", "nic:0:block": " "}).canonical_properties()
    )


def test_nic_block_changes_live_and_goes_with_its_nic() -> None:
    config = parse_keys({"nic:0:model": "e1000", "nic:0:block": "tcp/22"})
    assert config.offline_changes({"nic:0:block": "tcp/22 udp/53", "name": "x"}) == []
    assert config.offline_changes({"nic:0:model": "virtio"}) == ["nic:0:model"]
    changed = config.merge({"nic:0:block": "udp/53"})
    assert changed.canonical_properties()["nic:0:block"] == "udp/53"
    assert "nic:0:block" not in config.merge({"nic:0:block": ""}).canonical_properties()
    assert config.merge({"nic:0:model": ""}).nics == ()


def test_a_configuration_stored_past_the_text_bounds_still_loads_and_takes_other_changes() -> None:
    # Stored before servers had drives' bounds on name and user keys.
    stored = {"name": "n" * 300, "cpu": "1000", "mem": "256"}
    stored |= {f"user:k{index}": "v" for index in range(100)}
    config = ServerConfig.from_properties(stored)
    assert config.merge({"mem": "512"}).mem == 512
    assert len(config.merge({"user:k0": ""}).user) == 99
    with pytest.raises(UsageError, match="user:\\* keys"):
        config.merge({"user:new": "v"})
    with pytest.raises(UsageError, match="name"):
        config.merge({"name": "m" * 257})


@pytest.mark.parametrize(
    ("first", "second"),
    [("password", "vnc:password"), ("vnc:password", "password"), ("vnc", "vnc:ip")],
)
def test_an_alias_and_its_key_with_different_values_are_named_as_given(
    first: str, second: str
) -> None:
    # Alias first, the message named the canonical key twice: "vnc:password and vnc:password".
    props = {"name": "s", "cpu": "1000", "mem": "256", first: "auto", second: "abc"}
    with pytest.raises(UsageError) as refused:
        ServerConfig.from_properties(props)
    assert str(refused.value).startswith(f"{first} and {second} are both given")
