"""The JSON codec: shapes, numbers, and lenient input."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openhosting.errors import UsageError
from openhosting.wire.json_codec import parse_json_object, render_json
from openhosting.wire.payload import Properties, PropertiesList, ValueList

keys = st.text(min_size=1, max_size=20)
values = st.text(max_size=40)


@given(st.dictionaries(keys, values, max_size=8))
def test_every_mapping_round_trips_through_json(mapping: dict[str, str]) -> None:
    assert parse_json_object(render_json(Properties(mapping))) == mapping


def test_one_object_is_a_json_object_with_numbers_as_numbers() -> None:
    document = json.loads(render_json(Properties({"drive": "x", "size": 171798691840})))
    assert document == {"drive": "x", "size": 171798691840}


def test_several_objects_are_an_array() -> None:
    assert json.loads(render_json(PropertiesList([{"a": "1"}, {"b": 2}]))) == [{"a": "1"}, {"b": 2}]


def test_a_list_is_an_array_of_objects_with_its_keys() -> None:
    payload = ValueList(("type", "resource"), [{"type": "ip", "resource": "192.168.0.1"}])
    assert json.loads(render_json(payload)) == [{"type": "ip", "resource": "192.168.0.1"}]


def test_input_takes_numbers_strings_booleans_and_lists() -> None:
    body = '{"name":"test","size":"160G","cpu":2000,"persistent":true,"tags":["a","b"],"x":1.0}'
    assert parse_json_object(body) == {
        "name": "test",
        "size": "160G",
        "cpu": "2000",
        "persistent": "true",
        "tags": "a b",
        "x": "1",
    }


@pytest.mark.parametrize("body", ["[1,2]", '"text"', "{", '{"a":{"b":1}}', b"\xff\xfe"])
def test_input_that_is_not_an_object_of_values_is_a_usage_error(body: str) -> None:
    with pytest.raises(UsageError):
        parse_json_object(body)
