"""The serial log's hard bound, on real files: whatever is written, no file exceeds its size,
the files never exceed their number, and the newest output is what is kept."""

import os
from pathlib import Path

import pytest

from openhosting.hypervisor.serial_log import (
    RotatingLog,
    SerialLogLimit,
    log_files,
    read_log,
    remove_log,
)


def sizes(path: Path, files: int) -> list[int]:
    return [file.stat().st_size for file in log_files(path, files) if file.exists()]


def test_a_flood_leaves_at_most_files_times_file_bytes_and_keeps_the_newest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "serial.log"
    log = RotatingLog(path, SerialLogLimit(file_bytes=1000, files=3))
    written = b"".join(f"line {n}\n".encode() for n in range(100_000))  # ~790 KB
    for start in range(0, len(written), 4096):
        log.write(written[start : start + 4096])
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "serial.log",
        "serial.log.1",
        "serial.log.2",
    ]
    assert all(size <= 1000 for size in sizes(path, 3))
    kept = read_log(path, 3)
    assert 2000 < len(kept) <= 3000
    assert written.endswith(kept)  # the last output, in order, without a gap
    assert kept.endswith(b"line 99999\n")


def test_one_write_larger_than_the_whole_log_keeps_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    log = RotatingLog(path, SerialLogLimit(file_bytes=100, files=2))
    data = bytes(range(256)) * 40
    log.write(data)
    log.close()
    assert all(size <= 100 for size in sizes(path, 2))
    assert data.endswith(read_log(path, 2))
    assert len(read_log(path, 2)) > 100


def test_a_reopened_log_appends_within_the_same_bound(tmp_path: Path) -> None:
    # As when a restarted daemon attaches to a VM again.
    path = tmp_path / "serial.log"
    limit = SerialLogLimit(file_bytes=64, files=2)
    first = RotatingLog(path, limit)
    first.write(b"a" * 50)
    first.close()
    second = RotatingLog(path, limit)
    second.write(b"b" * 30)
    second.close()
    assert read_log(path, 2) == b"a" * 50 + b"b" * 30
    assert sizes(path, 2) == [64, 16]


def test_a_file_left_larger_than_the_limit_is_rotated_at_once(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    path.write_bytes(b"x" * 5000)  # e.g. written under a larger setting
    log = RotatingLog(path, SerialLogLimit(file_bytes=1000, files=2))
    log.write(b"new")
    log.close()
    assert path.read_bytes() == b"new"


def test_a_single_file_log_starts_afresh_when_full(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    log = RotatingLog(path, SerialLogLimit(file_bytes=10, files=1))
    log.write(b"0123456789abc")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["serial.log"]
    assert path.read_bytes() == b"abc"


def test_the_log_is_private_to_the_operator(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "serial.log", SerialLogLimit())
    log.close()
    assert (tmp_path / "serial.log").stat().st_mode & 0o777 == 0o600


def test_read_log_can_take_only_the_last_bytes_and_remove_log_removes_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "serial.log"
    (tmp_path / "serial.log.1").write_bytes(b"old-")
    path.write_bytes(b"new")
    assert read_log(path, 2) == b"old-new"
    assert read_log(path, 2, max_bytes=5) == b"d-new"
    assert read_log(tmp_path / "none.log", 2) == b""
    remove_log(path, 2)
    assert list(tmp_path.iterdir()) == []


def test_a_planted_symlink_or_fifo_is_neither_written_through_nor_read(tmp_path: Path) -> None:
    # A compromised QEMU owns the run directory and may plant these for the root daemon.
    run = tmp_path / "run"
    run.mkdir()
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root's secret\n")
    path = run / "serial.log"
    path.symlink_to(secret)
    (run / "serial.log.1").symlink_to(secret)
    assert read_log(path, 2) == b""
    log = RotatingLog(path, SerialLogLimit())
    log.write(b"guest output\n")
    log.close()
    assert secret.read_bytes() == b"root's secret\n"
    assert not path.is_symlink() and path.read_bytes() == b"guest output\n"

    os.mkfifo(run / "fifo.log")
    (run / "fifo.log.1").write_bytes(b"x")
    os.link(run / "fifo.log.1", run / "hard-link")
    assert read_log(run / "fifo.log", 2) == b""  # neither waits on the FIFO nor reads the link
    log = RotatingLog(run / "fifo.log", SerialLogLimit())
    log.write(b"ok")
    log.close()
    assert (run / "fifo.log").read_bytes() == b"ok"


@pytest.mark.parametrize(("file_bytes", "files"), [(0, 2), (10, 0)])
def test_a_limit_without_room_is_refused(file_bytes: int, files: int) -> None:
    with pytest.raises(ValueError):
        SerialLogLimit(file_bytes, files)


def test_a_failed_rotation_never_writes_to_a_stale_descriptor_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "serial.log"
    log = RotatingLog(path, SerialLogLimit(file_bytes=10, files=2))
    real_open = RotatingLog._open

    def full(self: RotatingLog) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RotatingLog, "_open", full)
    with pytest.raises(OSError):
        log.write(b"0123456789abc")  # the rotation's new file cannot be made
    monkeypatch.setattr(RotatingLog, "_open", real_open)
    log.write(b"more")
    log.close()
    assert read_log(path, 2) == b"0123456789more"
    assert all(size <= 10 for size in sizes(path, 2))
