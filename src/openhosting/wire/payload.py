"""The three shapes of data the API sends (docs/api.md §2), independent of text or JSON."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A value on the wire: integers are JSON numbers, everything else a string.
Value = str | int
Object = Mapping[str, Value]


@dataclass(frozen=True)
class Properties:
    """One object: `KEY VALUE` lines, or a JSON object."""

    values: Object
    # Its bodies once rendered, by whether JSON (as ValueList's): a drive's info answered
    # many times unchanged (services/drives/drives.py keeps one) is rendered once.
    rendered: dict[bool, bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class PropertiesList:
    """Several objects: blank-line separated `KEY VALUE` blocks, or a JSON array of objects."""

    items: Sequence[Object]
    # Its bodies once rendered, by whether JSON (as ValueList's): the infos of servers that
    # have not changed (services/servers/servers.py keeps them) are rendered once.
    rendered: dict[bool, bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ValueList:
    """A list of rows: one line of space-separated values each, or a JSON array of objects.

    `keys` names the columns in their text order (e.g. `type resource`).
    """

    keys: tuple[str, ...]
    rows: Sequence[Object]
    # Its bodies once rendered, by whether JSON: a listing answered many times unchanged
    # (services/drives/drives.py keeps one while nothing is committed) is rendered once.
    rendered: dict[bool, bytes] = field(default_factory=dict, compare=False, repr=False)


Payload = Properties | PropertiesList | ValueList

# The X-Elastic-Output header value for each shape.
OUTPUT_HEADER = "X-Elastic-Output"


def output_kind(payload: Payload) -> str:
    """The `X-Elastic-Output` header value that describes `payload`."""
    if isinstance(payload, Properties):
        return "properties"
    if isinstance(payload, PropertiesList):
        return "properties list"
    return "list"
