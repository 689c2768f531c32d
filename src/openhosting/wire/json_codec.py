"""The application/json codec (docs/api.md §2).

Output: one object → a JSON object; several → an array of objects; a list → an array of
objects with the list's keys. Input is lenient: numbers, strings and booleans are all taken
as their text, and a list of strings as the space-separated text form.
"""

import json
import re
from typing import Any

from openhosting.errors import UsageError
from openhosting.wire.payload import Payload, Properties, PropertiesList

# The API's bodies are one object whose values are strings, numbers or lists of them: two
# levels. A few more are allowed; thousands would exhaust the decoder's recursion.
MAX_DEPTH = 4
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def render_json(payload: Payload) -> str:
    """The JSON body for `payload`."""
    if isinstance(payload, Properties):
        document: Any = dict(payload.values)
    elif isinstance(payload, PropertiesList):
        document = [dict(item) for item in payload.items]
    else:
        document = [{key: row.get(key, "") for key in payload.keys} for row in payload.rows]
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(item, str | int) for item in value):
        return " ".join(_value_text(key, item) for item in value)
    raise UsageError(f"Invalid JSON value for key {key!r}: expected a string, number or list")


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the decoder sees it (brackets inside
    strings do not count)."""
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub('""', text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise UsageError(f"Invalid JSON body: nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _check_text(text: str, what: str) -> str:
    """`text` when it can be stored and sent back as UTF-8: JSON's `\\ud800` escapes can
    spell a lone surrogate, which no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"Invalid JSON body: {what} holds a lone surrogate (\\ud800-\\udfff)"
        ) from None
    return text


def parse_json_object(body: bytes | str) -> dict[str, str]:
    """Parse a JSON object of key/value pairs into the same mapping the text codec gives."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise UsageError("Invalid JSON body: not UTF-8") from None
    _check_depth(text)
    try:
        document = json.loads(text)
    except ValueError as error:
        raise UsageError(f"Invalid JSON body: {error}") from None
    if not isinstance(document, dict):
        raise UsageError("Invalid JSON body: expected an object of key/value pairs")
    parsed: dict[str, str] = {}
    for key, value in document.items():
        name = _check_text(str(key), "a key")
        parsed[name] = _check_text(_value_text(name, value), f"the value of {name!r}")
    return parsed
