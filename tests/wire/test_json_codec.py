"""The JSON codec: shapes, numbers, and lenient input."""

import contextlib
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


@pytest.mark.parametrize("body", ["[" * 2000, '{"a":' * 2000, '{"tags": [[[[["x"]]]]]}'])
def test_deep_nesting_is_refused_before_the_decoder_recurses(body: str) -> None:
    with pytest.raises(UsageError, match="nested deeper"):
        parse_json_object(body)


def test_brackets_inside_strings_are_not_nesting() -> None:
    assert parse_json_object('{"name": "[[[[[[{{{{{\\"]"}') == {"name": '[[[[[[{{{{{"]'}


@pytest.mark.parametrize("body", ['{"name": "\\ud800"}', '{"\\udfff": "x"}', '{"t": ["\\udc00"]}'])
def test_lone_surrogates_are_refused(body: str) -> None:
    with pytest.raises(UsageError, match="lone surrogate"):
        parse_json_object(body)


def test_a_surrogate_pair_is_one_character() -> None:
    assert parse_json_object('{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


def test_a_body_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(UsageError, match="UTF-8"):
        parse_json_object(b'{"name": "\xff"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(json_values)
def test_any_json_document_is_parsed_or_refused_as_usage(document: object) -> None:
    try:
        parsed = parse_json_object(json.dumps(document))
    except UsageError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_as_usage(body: bytes) -> None:
    with contextlib.suppress(UsageError):
        parse_json_object(body)
