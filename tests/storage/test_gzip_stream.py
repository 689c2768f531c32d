"""Reading a gzip image out of a drive: members, padding, damage."""

import gzip
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openhosting.storage.gzip_stream import GzipMembers, GzipStreamError, gzip_stream_size

PIECE = 64 * 1024


def inflate(data: bytes, splits: list[int] | None = None, piece: int = PIECE) -> bytes:
    members = GzipMembers(piece)
    cuts = sorted({0, len(data), *(s % (len(data) + 1) for s in splits or [])})
    out = bytearray()
    for first, end in itertools.pairwise(cuts):
        for chunk in members.feed(data[first:end]):
            assert len(chunk) <= piece
            out += chunk
    members.finish()
    return bytes(out)


def test_one_member_inflates_to_its_content() -> None:
    content = os.urandom(100_000) + bytes(300_000)
    assert inflate(gzip.compress(content)) == content


def test_members_one_after_another_are_one_stream() -> None:
    assert inflate(gzip.compress(b"hello ") + gzip.compress(b"world")) == b"hello world"


@pytest.mark.parametrize("padding", [bytes(1), bytes(4096), b"\xff" * 700, b"\x1f", b"junk"])
def test_padding_after_the_stream_is_ignored(padding: bytes) -> None:
    content = os.urandom(5000)
    assert inflate(gzip.compress(content) + padding) == content


@given(
    parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
    splits=st.lists(st.integers(min_value=0), max_size=8),
    padding=st.sampled_from([b"", bytes(513), b"\x1f", b"\x00\x8b"]),
)
@settings(max_examples=60, deadline=None)
def test_any_split_of_the_input_gives_the_same_output(
    parts: list[bytes], splits: list[int], padding: bytes
) -> None:
    stream = b"".join(gzip.compress(part, compresslevel=1) for part in parts) + padding
    assert inflate(stream, splits) == b"".join(parts)


def test_a_zero_bomb_comes_out_in_bounded_pieces() -> None:
    assert len(inflate(gzip.compress(bytes(20 * 1024 * 1024)), piece=1024 * 1024)) == 20 << 20


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"plain text, not gzip", "not a gzip stream"),
        (bytes(1000), "not a gzip stream"),
        (b"\x1f", "not a gzip stream"),
        (b"", "not a gzip stream"),
        (gzip.compress(os.urandom(10_000))[:-100], "cut short"),
        (b"\x1f\x8b\x08\x00" + os.urandom(100), "gzip"),
    ],
)
def test_what_is_not_a_whole_gzip_stream_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(GzipStreamError, match=message):
        inflate(data)


@pytest.mark.parametrize("field", ["crc", "length"])
def test_a_member_whose_trailer_does_not_match_its_data_is_refused(field: str) -> None:
    """Each member's CRC-32 and length (its last 8 bytes) are checked, the first member's of
    several too."""
    stream = bytearray(gzip.compress(os.urandom(100_000)))
    stream[-8 if field == "crc" else -4] ^= 1
    with pytest.raises(GzipStreamError, match="damaged gzip stream"):
        inflate(bytes(stream) + gzip.compress(b"next member"))


@pytest.mark.parametrize("step", [1, 1000, None])
@pytest.mark.parametrize("pieces", [1, 3])
def test_output_that_fills_its_last_piece_exactly_ends_the_stream(
    step: int | None, pieces: int
) -> None:
    """A member whose output ends exactly at a piece's end, with nothing after it in the
    input, is whole: the inflater has no output left for more input to bring out."""
    content = os.urandom(pieces * PIECE // 2) + bytes(pieces * PIECE - pieces * PIECE // 2)
    stream = gzip.compress(content, compresslevel=1)
    splits = list(range(0, len(stream), step)) if step else []
    assert inflate(stream, splits) == content


def test_stream_size_of_a_file_counts_decompressed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "image.gz"
    content = os.urandom(1 << 20) + bytes(3 << 20) + b"end"
    path.write_bytes(gzip.compress(content, compresslevel=1) + bytes(1000))
    assert gzip_stream_size(path, read_size=100_000) == len(content)
    path.write_bytes(b"raw image")
    with pytest.raises(GzipStreamError):
        gzip_stream_size(path)
