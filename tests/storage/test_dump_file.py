"""Dump files: a saved VM state stored encrypted and read back whole, or refused."""

import os
import secrets
import threading
from pathlib import Path

import pytest

from openhosting.storage.dump_file import RECORD_BYTES, DumpError, read_dump, write_dump

UUID = "0f6c4f3e-6f0a-4c3e-9a55-3f1d2b7c8e90"
KEY = bytes(range(32))


def store(path: Path, data: bytes, key: bytes = KEY) -> int:
    """Stream `data` through a pipe into a dump at `path`, as QEMU would."""
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        return write_dump(read_end, path, key, UUID)
    finally:
        feeder.join()
        os.close(read_end)


def load(path: Path, key: bytes = KEY, uuid: str = UUID) -> bytes:
    """What a restoring QEMU would read from the pipe."""
    read_end, write_end = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(65536):
                received.extend(chunk)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        read_dump(path, write_end, key, uuid)
    finally:
        os.close(write_end)
        drainer.join()
    return bytes(received)


@pytest.mark.parametrize("size", [0, 1, RECORD_BYTES, 2 * RECORD_BYTES + 17])
def test_a_stored_state_reads_back_byte_for_byte(tmp_path: Path, size: int) -> None:
    data = secrets.token_bytes(size)
    path = tmp_path / "s.dump"
    assert store(path, data) == size
    assert load(path) == data
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_stored_file_holds_no_plaintext(tmp_path: Path) -> None:
    marker = b"GUEST-MEMORY-MARKER-41d9"
    path = tmp_path / "s.dump"
    store(path, (b"\0" * 4096 + marker) * 300)
    assert marker not in path.read_bytes()


def test_a_dump_cut_off_at_a_record_boundary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.dump"
    store(path, secrets.token_bytes(RECORD_BYTES + 5))
    whole = path.read_bytes()
    # Drop the last record (5 bytes of plaintext: 4 + 5 + 16 on disk).
    path.write_bytes(whole[: -(4 + 5 + 16)])
    with pytest.raises(DumpError, match="damaged"):
        load(path)


def test_an_altered_byte_is_refused_before_any_of_its_record_reaches_qemu(tmp_path: Path) -> None:
    path = tmp_path / "s.dump"
    store(path, b"A" * 1000)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DumpError, match="record 0 is damaged"):
        load(path)


def test_another_platform_key_or_server_cannot_read_it(tmp_path: Path) -> None:
    path = tmp_path / "s.dump"
    store(path, b"state")
    with pytest.raises(DumpError, match="not this platform's"):
        load(path, key=bytes(32))
    with pytest.raises(DumpError, match="not this platform's"):
        load(path, uuid="11111111-1111-4111-8111-111111111111")


def test_a_missing_or_foreign_file_is_a_dump_error(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match="no dump"):
        load(tmp_path / "none.dump")
    (tmp_path / "x.dump").write_bytes(b"not a dump at all")
    with pytest.raises(DumpError, match="not a dump"):
        load(tmp_path / "x.dump")
