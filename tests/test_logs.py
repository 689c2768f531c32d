"""Log lines: `key=value` text or one JSON object a line, each carrying its request's id."""

import json
import logging
import sys

import pytest

from openhosting.logs import REQUEST_ID, JsonFormatter, RequestIdFilter, TextFormatter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("openhosting.test", logging.INFO, __file__, 1, message, args, exc_info)
    RequestIdFilter().filter(made)
    return made


def test_json_lines_carry_the_key_value_pairs_as_fields() -> None:
    line = JsonFormatter().format(
        record("event=server_started user=%s server=%s pid=%s error=%r", "u1", "s1", 42, "a b")
    )
    entry = json.loads(line)
    assert entry["event"] == "server_started"
    assert (entry["user"], entry["server"], entry["pid"]) == ("u1", "s1", "42")
    assert entry["error"] == "a b"  # a quoted value is one field, unquoted
    assert entry["level"] == "info" and entry["logger"] == "openhosting.test"
    assert entry["time"].endswith("Z")
    assert "\n" not in line


def test_json_lines_keep_a_traceback_in_one_line() -> None:
    line = JsonFormatter().format(record("event=internal_error path=/x", exc=True))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["traceback"]


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_lines_logged_while_a_request_is_served_carry_its_id(
    formatter: logging.Formatter,
) -> None:
    token = REQUEST_ID.set("0123456789abcdef")
    try:
        line = formatter.format(record("event=imaging_accepted job=1"))
    finally:
        REQUEST_ID.reset(token)
    assert "0123456789abcdef" in line
    assert "0123456789abcdef" not in formatter.format(record("event=imaging_done job=1"))
