"""A child igzip inflating a gzip stream: its output, its faults, and its end in every case."""

import errno
import gzip
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openhosting.storage import igzip_child
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.igzip_child import IgzipInflater

MiB = 1024 * 1024


class Stopped(Exception):
    """What a stop request raises in these tests."""


@pytest.fixture
def igzip() -> str:
    program = igzip_child.igzip_program()
    assert program is not None, "igzip is not installed (Debian: isal)"
    return program


def feeding(data: bytes, piece: int = 64 * 1024) -> Callable[[int], Iterator[int]]:
    """A feed writing `data` into the child's stdin."""

    def feed(stdin: int) -> Iterator[int]:
        for at in range(0, len(data), piece):
            yield os.write(stdin, data[at : at + piece])

    return feed


def read_all(child: IgzipInflater) -> bytes:
    out = bytearray()
    buffer = memoryview(bytearray(MiB))
    while count := child.fill(buffer):
        out += buffer[:count]
    return bytes(out)


def is_gone(pid: int) -> bool:
    """The process ended and was waited for (no zombie left either)."""
    return not Path(f"/proc/{pid}").exists()


def nothing(*_args: object) -> None:
    pass


def test_a_stream_of_members_is_inflated_up_to_the_padding(igzip: str) -> None:
    parts = [os.urandom(300_000), bytes(2 * MiB), b"tail"]
    stream = b"".join(gzip.compress(part, compresslevel=1) for part in parts)
    # Zeros, then what would be another member: the stream ended at the zeros.
    stored = stream + bytes(5000) + gzip.compress(b"not part of it") + bytes(MiB)
    with IgzipInflater(igzip, feeding(stored), nothing) as child:
        assert read_all(child) == b"".join(parts)
        child.finish()
        pid = child.pid
    assert is_gone(pid)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (b"this drive holds no gzip stream" + bytes(1000), "not a gzip stream"),
        (bytes(4096), "not a gzip stream"),
        (gzip.compress(os.urandom(MiB))[:-9], "cut short"),
        (gzip.compress(b"a" * MiB) + b"\x1f\x8bjunk after a gzip magic", "damaged gzip stream"),
    ],
    ids=["not-gzip", "zeros", "truncated", "damaged-member"],
)
def test_what_is_not_a_whole_gzip_stream_is_a_gzip_stream_error(
    igzip: str, stored: bytes, message: str
) -> None:
    with IgzipInflater(igzip, feeding(stored), nothing) as child:
        read_all(child)
        with pytest.raises(GzipStreamError, match=message):
            child.finish()
        pid = child.pid
    assert is_gone(pid)


def test_an_error_reading_src_is_the_error_raised_not_the_cut_stream(igzip: str) -> None:
    stream = gzip.compress(os.urandom(2 * MiB), compresslevel=1)

    def failing_feed(stdin: int) -> Iterator[int]:
        yield os.write(stdin, stream[:MiB])
        raise OSError(errno.EIO, "Input/output error")

    with IgzipInflater(igzip, failing_feed, nothing) as child:
        read_all(child)
        with pytest.raises(OSError) as raised:
            child.finish()
    assert raised.value.errno == errno.EIO


def test_a_stop_while_the_child_says_nothing_ends_it_and_its_feeder(tmp_path: Path) -> None:
    """A child that neither reads nor writes (hung): the wait for its output hears of the
    stop request within a poll, and leaving kills the child and ends the feeder, blocked on
    a full pipe until then."""
    hung = tmp_path / "hung-igzip"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    stop = threading.Event()
    fed = threading.Event()

    def endless_feed(stdin: int) -> Iterator[int]:
        fed.set()
        while True:  # bounded by the pipe: blocks once it is full, EPIPE once the child is gone
            yield os.write(stdin, bytes(64 * 1024))

    def waiting() -> None:
        if stop.is_set():
            raise Stopped

    started = time.monotonic()
    with pytest.raises(Stopped), IgzipInflater(str(hung), endless_feed, waiting) as child:
        pid = child.pid
        assert fed.wait(10)
        threading.Timer(0.2, stop.set).start()
        child.fill(memoryview(bytearray(MiB)))
    assert time.monotonic() - started < 10
    assert is_gone(pid)
    assert not [t for t in threading.enumerate() if t.name == "igzip-feed"]
