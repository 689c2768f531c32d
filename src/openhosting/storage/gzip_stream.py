"""Reading a gzip image out of a drive: the stream, then whatever padding fills the drive.

A drive holding a gzip image is usually larger than the image (the upload tool rounds sizes
up), so the stream is followed by zeros or junk up to the drive's end. As `gzip -d` does,
members one after another are one stream; the stream ends at the first byte after a member
that does not start another member, and what follows is ignored. Uses ISA-L, about twice
zlib's speed, which also releases the GIL while it works; each member's CRC and length are
checked against its trailer.
"""

import os
from collections.abc import Iterator
from pathlib import Path

from isal import igzip_lib
from isal.igzip_lib import DECOMP_GZIP, IgzipDecompressor

from openhosting.errors import FailedError

GZIP_WBITS = 31  # a gzip header and trailer around deflate data
GZIP_MAGIC = b"\x1f\x8b"
# Input is handed to the inflater in slices this big: what a bounded-output call leaves of
# its input, the inflater copies to keep (a slice of zeros can inflate a thousandfold).
INPUT_SLICE = 128 * 1024
# Output pieces that stay in the CPU cache while the inflater writes them and its caller
# copies them on: twice the inflater's speed of 8 MiB pieces (bench imaging, 1 GiB image).
INFLATE_PIECE = 512 * 1024
# What the inflater raises on bad data (isal's stubs declare it as an instance, not a class).
INFLATE_ERROR: type[Exception] = igzip_lib.IsalError  # type: ignore[assignment]


class GzipStreamError(FailedError):
    """The bytes are not a gzip stream, or the stream is damaged or cut short."""


class GzipMembers:
    """Inflate a gzip stream fed in pieces; output comes in pieces of at most `piece` bytes.

    ISA-L's bounded decompressor (`IgzipDecompressor`) keeps what a call leaves of its input
    itself, so the rest of a slice is not handed back and copied on every call (zlib's
    `unconsumed_tail`), and allocates each piece at its full size at once."""

    def __init__(self, piece: int) -> None:
        self._piece = piece
        self._inflater = IgzipDecompressor(DECOMP_GZIP)
        self._between_members = True  # at the start, or just after a member's trailer
        self._held = b""  # a lone byte at a member boundary: too short to tell what follows
        self.members = 0
        self.ended = False  # the stream is over; the rest of the input is padding

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Decompressed bytes of `data`; nothing once the stream has ended."""
        if self.ended:
            return
        if self._held:
            data, self._held = self._held + bytes(data), b""
        view = memoryview(data)
        for at in range(0, len(view), INPUT_SLICE):
            yield from self._feed_slice(view[at : at + INPUT_SLICE])
            if self.ended:
                return

    def _feed_slice(self, data: bytes | memoryview) -> Iterator[bytes]:
        while data:
            if self._between_members:
                if len(data) < len(GZIP_MAGIC):
                    self._held = bytes(data)
                    return
                if bytes(data[:2]) != GZIP_MAGIC:
                    if self.members == 0:
                        raise GzipStreamError("not a gzip stream (no gzip header at the start)")
                    self.ended = True
                    return
                self._between_members = False
                self._inflater = IgzipDecompressor(DECOMP_GZIP)
            yield from self._inflate(data)
            if not self._inflater.eof:
                return
            self.members += 1
            self._between_members = True
            data = self._inflater.unused_data

    def _inflate(self, data: bytes | memoryview) -> Iterator[bytes]:
        """What `data` inflates to, in pieces, until it is all taken or the member ends."""
        inflater = self._inflater
        try:
            while True:
                out = inflater.decompress(data, self._piece)
                if out:
                    yield out
                if inflater.eof or inflater.needs_input:
                    return
                data = b""
        except INFLATE_ERROR as error:
            raise GzipStreamError(f"damaged gzip stream: {error}") from None

    def finish(self) -> None:
        """The input is over: check that it held a whole gzip stream."""
        if not self._between_members:
            raise GzipStreamError("the gzip stream is cut short")
        if self.members == 0:
            raise GzipStreamError("not a gzip stream (too short to hold one)")


def gzip_stream_size(path: Path, read_size: int = 8 * 1024 * 1024) -> int:
    """The decompressed size of the gzip image in the file at `path`, checking it whole."""
    members = GzipMembers(read_size)
    total = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        position = 0
        while not members.ended:
            data = os.pread(fd, read_size, position)
            if not data:
                break
            position += len(data)
            total += sum(len(out) for out in members.feed(data))
    finally:
        os.close(fd)
    members.finish()
    return total
