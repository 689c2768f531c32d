"""The hostile-input tables: bodies (as text and as JSON) and headers that every command of the
API must refuse with a clear 4xx and the right X-Elastic-Error, never a 500 (docs/api.md §3),
and the filling of a route's placeholders with real ids.

tests/api/test_hostile_input.py sends every row to every route (`make test`); the bad-input
reliability campaign (bench/reliability/bad_input.py) seeds its random requests with them. An
input found failing there belongs here as a regression row.
"""

import re

TEXT_BODIES: list[bytes] = [
    b"\xff\xfe\xfd not utf-8",
    b"name \xed\xa0\x80",  # a surrogate, as UTF-8 would spell it
    b"name a\x00b",
    b"\x00" * 64,
    b"size -1",
    b"size 99999999999999999999999999",
    b"size 9223372036854775807",
    b"size 9223372036854775807\nencryption:cipher none",
    b"size 1e10",
    b"size 10\nreaders not-a-uuid",
    b"size 10\nclaim:type \xc3\xa4",
    b"name s\ncpu -5\nmem 256",
    b"name s\ncpu 99999999999999999999999999\nmem 256",
    b"name s\ncpu 1000\nmem 256\nide:0:0 " + b"f" * 5000,
    b"name s\ncpu 1000\nmem 256\nnic:0:model e1000\nnic:0:dhcp 999.1.1.1",
    b"name s\ncpu 1000\nmem 256\nvnc:password \x01\x02",
    b"no-such-key value",
    b"user: empty",
    b"user:" + b"k" * 300 + b" v",
    b"".join(b"user:k%d v\n" % index for index in range(200)),
    b"name " + b"x" * 70000,  # past the 64 KiB cap
    b"tags " + b"t " * 30000,
    b"\tname\tx",
    b"resource 1.2.3.4.5",
    b"resource \xc3\xa4",
]
JSON_BODIES: list[bytes] = [
    b"[" * 2000,
    b'{"a":' * 2000,
    b"[]",
    b"123",
    b"null",
    b'"text"',
    b"{",
    b'{"name": "x",}',
    b'{"name": "\\ud800"}',
    b'{"\\udfff": "x"}',
    b'{"size": "1M", "name": "a\\u0000b"}',
    b'{"size": 1e400}',
    b'{"size": -1}',
    b'{"size": NaN}',
    b'{"size": 9223372036854775807}',
    b'{"size": ' + b"9" * 5000 + b"}",
    b'{"size": true}',
    b'{"size": {"a": 1}}',
    b'{"name": [[1]]}',
    b'{"name": null, "size": "1k"}',
    b'{"name": "s", "cpu": -1, "mem": 1e9}',
    b'{"name": "s", "cpu": 1000, "mem": 256, "boot": ["ide:0:0", {"x": 1}]}',
    b'{"' + b"k" * 60000 + b'": 1}',
    b"\xff\xfe{}",
]

HOSTILE_HEADERS: list[dict[str, str]] = [
    {"Accept": "application/json\u00e4"},
    {"Accept": "\u00e4" * 100},
    {"Content-Type": "\u00e4/\u00e4"},
    {"Content-Type": "application/json; charset=\u00e4"},
    {"Content-Type": "multipart/form-data; boundary=x"},
    {"Content-Encoding": "\u00e4"},
    {"Content-Encoding": "gzip"},
    {"Content-Encoding": "br, gzip"},
    {"Expect": "\u00e4"},
    {"Expect": "100-continue"},
    {"Accept-Encoding": "\u00e4"},
    {"X-Forwarded-For": "\u00e4"},
    {"Host": "\u00e4"},
]

_PLACEHOLDER = re.compile(r"\{(\w+)(:[^{}]*(\{[^{}]*\}[^{}]*)*)?\}")


def fill(path: str, values: dict[str, str]) -> str:
    """`path` with each `{name}` or `{name:regex}` replaced by `values[name]`."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], path)
