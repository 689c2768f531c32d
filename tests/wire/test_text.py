"""The text codec: KEY VALUE lines, escapes, leniency, and the list shapes."""

from hypothesis import given
from hypothesis import strategies as st

from openhosting.wire.payload import Properties, PropertiesList, ValueList
from openhosting.wire.text import parse_properties, parse_properties_list, render_text
from tests.conftest import SAMPLES

keys = st.from_regex(r"[a-z][a-z0-9:_.-]{0,20}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.dictionaries(keys, values, max_size=8))
def test_every_mapping_round_trips_through_text(mapping: dict[str, str]) -> None:
    assert parse_properties(render_text(Properties(mapping))) == mapping


@given(st.lists(st.dictionaries(keys, values, min_size=1, max_size=5), max_size=4))
def test_several_objects_round_trip_through_the_properties_list_form(items: list) -> None:
    assert parse_properties_list(render_text(PropertiesList(items))) == items


def test_newlines_in_values_are_escaped_on_one_line() -> None:
    text = render_text(Properties({"user:note": "a\nb"}))
    assert text == "user:note a\\nb\n"
    assert parse_properties("user:note a\\nb") == {"user:note": "a\nb"}


def test_input_tolerates_crlf_blank_lines_indentation_and_no_final_newline() -> None:
    body = "\r\n  name TestDrive\r\n\r\nsize 10000000\r\nclaim:type exclusive"
    assert parse_properties(body) == {
        "name": "TestDrive",
        "size": "10000000",
        "claim:type": "exclusive",
    }


def test_value_is_everything_after_the_first_space() -> None:
    assert parse_properties("name Ubuntu 10.10 Server  Edition") == {
        "name": "Ubuntu 10.10 Server  Edition"
    }
    assert parse_properties("tags") == {"tags": ""}


def test_properties_list_has_one_blank_line_between_objects() -> None:
    text = render_text(PropertiesList([{"a": "1"}, {"b": "2"}]))
    assert text == "a 1\n\nb 2\n"


def test_value_list_is_one_line_of_values_per_row() -> None:
    rows = [{"type": "ip", "resource": "192.168.0.1"}, {"type": "vlan", "resource": "x"}]
    assert render_text(ValueList(("type", "resource"), rows)) == "ip 192.168.0.1\nvlan x\n"


def test_integers_render_as_plain_numbers() -> None:
    assert render_text(Properties({"size": 10000000})) == "size 10000000\n"


def test_every_sample_of_the_real_service_parses() -> None:
    samples = sorted(SAMPLES.glob("*.txt"))
    assert len(samples) >= 9
    for sample in samples:
        objects = parse_properties_list(sample.read_text())
        assert objects, sample
        assert all(objects), sample


def test_multi_object_sample_has_two_servers() -> None:
    servers = parse_properties_list((SAMPLES / "servers.txt").read_text())
    assert [s["status"] for s in servers] == ["active", "stopped"]
    assert servers[0]["nic:0:dhcp"] == "46.20.114.124"


def test_seed_drive_sample_keeps_claimed_entries() -> None:
    drive = parse_properties((SAMPLES / "drive.txt").read_text())
    assert (
        drive["claimed"].split()[0].endswith(":guest:692cd1c7-a863-4a22-8170-fc6e6feb68af:ide:0:0")
    )
    assert drive["size"] == "8589934592"
