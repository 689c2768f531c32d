"""Size syntax: byte counts with an optional binary k/M/G/T suffix (`10G` = 10737418240)."""

import re

from openhosting.errors import UsageError

_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"([0-9]{1,20})([kKmMgGtT]?)")

# Larger than any file a filesystem holds (2^63 - 1 is the largest off_t).
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str, what: str = "size") -> int:
    """The byte count `text` stands for; `what` names the key in the error message."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"Invalid {what} {text!r}: expected a number of bytes with an optional k, M, G or T"
            " suffix"
        )
    value = int(match.group(1)) * _MULTIPLIERS[match.group(2).lower()]
    if value > MAX_SIZE:
        raise UsageError(f"Invalid {what} {text!r}: too large")
    return value
