"""What the checker knows a drive must hold: the bytes of every acknowledged write, resize and
create, with the ranges that an unacknowledged request may or may not have changed marked
unknown. Writes carry a pattern derived from (drive, offset, seq), so that a byte read back
can be told apart from any other write's."""

import hashlib
import re
from dataclasses import dataclass, field

_KNOWN_RUN = re.compile(b"\x01+")


def pattern(drive: str, offset: int, seq: int, length: int) -> bytes:
    """`length` bytes that only the write number `seq` at `offset` of `drive` holds."""
    block = hashlib.sha256(f"{drive}:{offset}:{seq}".encode()).digest()
    return (block * (length // len(block) + 1))[:length]


@dataclass
class DriveModel:
    """One drive as the acknowledged history says it is. A new drive reads as zeros."""

    uuid: str
    size: int
    expected: bytearray = field(init=False)
    known: bytearray = field(init=False)  # 1 where `expected` is certain, 0 where not

    def __post_init__(self) -> None:
        self.expected = bytearray(self.size)
        self.known = bytearray(b"\x01" * self.size)

    def acknowledged_write(self, offset: int, data: bytes) -> None:
        end = min(offset + len(data), self.size)
        self.expected[offset:end] = data[: end - offset]
        self.known[offset:end] = b"\x01" * (end - offset)

    def uncertain(self, offset: int = 0, length: int | None = None) -> None:
        """A request that was not acknowledged may have changed these bytes (or all of them)."""
        end = self.size if length is None else min(offset + length, self.size)
        self.known[offset:end] = bytes(max(0, end - offset))

    def acknowledged_resize(self, size: int) -> None:
        """A grown drive reads zeros past its old end; a shrunk one loses its tail."""
        if size < self.size:
            del self.expected[size:], self.known[size:]
        else:
            self.expected += bytes(size - self.size)
            self.known += b"\x01" * (size - self.size)
        self.size = size

    def adopt_size(self, size: int) -> None:
        """After a resize whose answer was lost: the size is what the drive says, and only
        what lies below both sizes can still be known."""
        known_end = min(size, self.size)
        self.acknowledged_resize(size)
        self.uncertain(known_end)

    def mismatches(self, actual: bytes) -> list[str]:
        """Every known range that `actual` (the drive read whole) does not hold, in words."""
        problems = []
        if len(actual) != self.size:
            problems.append(f"drive {self.uuid}: size {len(actual)}, acknowledged {self.size}")
        for run in _KNOWN_RUN.finditer(self.known):
            start, end = run.span()
            if actual[start:end] != self.expected[start:end]:
                first = next(
                    (i for i in range(start, end) if i >= len(actual)
                     or actual[i] != self.expected[i]), end,
                )  # fmt: skip
                problems.append(
                    f"drive {self.uuid}: acknowledged bytes differ from offset {first}"
                    f" (known range {start}-{end})"
                )
        return problems
