"""Size syntax: binary suffixes, plain bytes, and refusals."""

import pytest

from openhosting.errors import UsageError
from openhosting.wire.sizes import parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10000000", 10000000),
        ("0", 0),
        ("1k", 1024),
        ("5M", 5242880),
        ("10G", 10737418240),
        ("160G", 171798691840),
        ("1T", 1099511627776),
        ("3g", 3221225472),
    ],
)
def test_sizes_with_binary_suffixes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "10X", "G", "1 G", "abc", "99999999999T"])
def test_invalid_sizes_name_the_key(text: str) -> None:
    with pytest.raises(UsageError, match="offset"):
        parse_size(text, "offset")
