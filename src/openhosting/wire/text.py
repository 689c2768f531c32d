"""The text/plain codec: `KEY VALUE` lines (docs/api.md §2).

A value's newlines are written as `\\n` (and a backslash as `\\\\`, a carriage return as
`\\r`) so that every value fits on its line and reads back exactly. Input is lenient: `\\r\\n`
line ends, blank lines, indentation and a missing final newline are all fine.
"""

from collections.abc import Iterable

from openhosting.errors import UsageError
from openhosting.wire.payload import Object, Payload, Properties, PropertiesList, Value

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def escape_value(value: str) -> str:
    """One line's worth of `value`: newlines, returns and backslashes escaped."""
    if "\\" not in value and "\n" not in value and "\r" not in value:
        return value
    return "".join(_ESCAPES.get(char, char) for char in value)


def unescape_value(text: str) -> str:
    """The inverse of `escape_value`; an unknown escape such as `\\x` is kept as written."""
    if "\\" not in text:
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in _UNESCAPES:
            out.append(_UNESCAPES[text[index + 1]])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """Parse `KEY VALUE` lines into a mapping; the value is everything after the first space.

    A key given twice keeps its last value. A line with only a key has the empty value.
    """
    result: dict[str, str] = {}
    for raw_line in text.split("\n"):
        line = raw_line.removesuffix("\r").lstrip(" \t")
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        if "\t" in key:
            raise UsageError(f"Invalid key {key!r}: keys are separated from values by a space")
        result[key] = unescape_value(value)
    return result


def parse_properties_list(text: str) -> list[dict[str, str]]:
    """Parse blank-line separated blocks of `KEY VALUE` lines (the `properties list` form)."""
    blocks: list[dict[str, str]] = []
    current: list[str] = []
    for line in [*text.split("\n"), ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(parse_properties("\n".join(current)))
            current = []
    return blocks


def _format_value(value: Value) -> str:
    if isinstance(value, bool):  # bool is an int; never let True render as "True"
        return "true" if value else "false"
    return escape_value(str(value))


def render_object(values: Object) -> str:
    """`KEY VALUE` lines for one object, each ending in a newline."""
    # An empty value still gets its space, so that naive `split(" ", 1)` readers cope.
    return "".join(f"{key} {_format_value(value)}\n" for key, value in values.items())


def render_rows(keys: Iterable[str], rows: Iterable[Object]) -> str:
    """One line per row, the values of `keys` separated by spaces."""
    key_list = list(keys)
    if len(key_list) == 1:
        # The listings of one column (`drives/list`, `servers/list`): the hottest answers,
        # without the inner join per row.
        key = key_list[0]
        return "".join([_format_value(row.get(key, "")) + "\n" for row in rows])
    return "".join(
        " ".join(_format_value(row.get(key, "")) for key in key_list) + "\n" for row in rows
    )


def render_text(payload: Payload) -> str:
    """The text/plain body for `payload`."""
    if isinstance(payload, Properties):
        return render_object(payload.values)
    if isinstance(payload, PropertiesList):
        return "\n".join(render_object(item) for item in payload.items)
    return render_rows(payload.keys, payload.rows)
