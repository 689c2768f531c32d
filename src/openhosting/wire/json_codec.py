"""The application/json codec (docs/api.md §2).

Output: one object → a JSON object; several → an array of objects; a list → an array of
objects with the list's keys. Input is lenient: numbers, strings and booleans are all taken
as their text, and a list of strings as the space-separated text form.
"""

import json
from typing import Any

from openhosting.errors import UsageError
from openhosting.wire.payload import Payload, Properties, PropertiesList


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


def parse_json_object(body: bytes | str) -> dict[str, str]:
    """Parse a JSON object of key/value pairs into the same mapping the text codec gives."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"Invalid JSON body: {error}") from None
    if not isinstance(document, dict):
        raise UsageError("Invalid JSON body: expected an object of key/value pairs")
    return {str(key): _value_text(str(key), value) for key, value in document.items()}
