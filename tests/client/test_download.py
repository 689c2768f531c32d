"""`openhosting-download`: drives downloaded in chunks with the original tool's output, exact
sizes, holes for zeros, and resumption from the local file."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.client.conftest import (
    BIN,
    WITH_CTRL_C,
    ApiDaemon,
    interrupt_mid_transfer,
    loop_device,
)

CHUNK = 65536


def drive_holding(api: ApiDaemon, data: bytes, cipher: str | None = None) -> str:
    drive = api.create_drive(len(data), cipher=cipher)
    api.check("openhosting", "-c", "drives", drive, "write", input=data)
    return drive


def test_download_prints_the_original_transcript_and_cuts_the_last_chunk(
    api: ApiDaemon, tmp_path: Path
) -> None:
    data = os.urandom(10_000_000)
    drive = drive_holding(api, data)
    out = api.check("openhosting-download", drive, tmp_path / "image.raw")
    assert out == "Downloading 2 chunks of 5242880 bytes starting at 0: .. completed\n"
    assert (tmp_path / "image.raw").read_bytes() == data


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
def test_chunks_of_zeros_become_holes(api: ApiDaemon, tmp_path: Path, cipher: str) -> None:
    data = os.urandom(CHUNK) + bytes(40 * CHUNK) + os.urandom(1000) + bytes(20 * CHUNK)
    drive = drive_holding(api, data, cipher)
    target = tmp_path / "image"
    api.check("openhosting-download", "-c", str(CHUNK), drive, target)
    assert target.read_bytes() == data
    # Only the two chunks that hold data take room on disk (ext4 allocates in 4 KiB blocks).
    assert target.stat().st_blocks * 512 <= 2 * CHUNK + 8192


def test_a_larger_existing_file_is_overwritten_and_cut_to_the_drives_size(
    api: ApiDaemon, tmp_path: Path
) -> None:
    data = bytes(3 * CHUNK) + os.urandom(100)
    drive = drive_holding(api, data, "none")
    target = tmp_path / "image"
    target.write_bytes(b"\xff" * (5 * CHUNK))
    api.check("openhosting-download", "-c", str(CHUNK), "-o", "0", drive, target)
    assert target.read_bytes() == data


def test_without_o_a_file_larger_than_the_drive_is_named_and_left_as_it_was(
    api: ApiDaemon, tmp_path: Path
) -> None:
    drive = drive_holding(api, os.urandom(2 * CHUNK), "none")
    target = tmp_path / "image"
    target.write_bytes(b"\xff" * (5 * CHUNK))
    done = api.run("openhosting-download", "-c", str(CHUNK), drive, target)
    assert done.returncode == 1 and done.stdout == b""
    # It said "Offset 327680 is past the end", an offset the user never gave.
    assert done.stderr.decode() == (
        f"{target} is larger than drive {drive} ({2 * CHUNK} bytes), so it is no download of"
        " it to resume: -o 0 downloads the drive over it\n"
    )
    assert target.read_bytes() == b"\xff" * (5 * CHUNK)
    done = api.run("openhosting-download", "-o", str(3 * CHUNK), drive, target)
    assert done.stderr.decode().startswith(f"Offset {3 * CHUNK} is past the end of drive")


@pytest.mark.parametrize("target", ["/dev/stdout", "fifo"])
def test_a_pipe_as_file_is_refused_before_any_chunk(
    api: ApiDaemon, tmp_path: Path, target: str
) -> None:
    # `openhosting-download D /dev/stdout | sha256sum`: "Failed to read chunk at offset 0",
    # an OSError "Illegal seek", and "Restart with '-o 0'", which failed the same way.
    drive = drive_holding(api, os.urandom(CHUNK), "none")
    path = Path(target) if target.startswith("/") else tmp_path / target
    if target == "fifo":
        os.mkfifo(path)
    done = api.run("openhosting-download", drive, path)  # its stdout is a pipe
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        f"{path} cannot be written at offsets (a pipe or a terminal): give a file or a block"
        " device\n"
    )
    assert api.info(drive)["read:requests"] == "0"


def test_without_o_it_resumes_from_the_files_size_rounded_down_to_a_chunk(
    api: ApiDaemon, tmp_path: Path
) -> None:
    data = os.urandom(10 * CHUNK + 77)
    drive = drive_holding(api, data, "none")
    target = tmp_path / "image"
    # A download cut short in the middle of chunk 4: chunks 0-3 whole, then a partial one.
    target.write_bytes(data[: 4 * CHUNK] + b"garbage")
    out = api.check("openhosting-download", "-c", str(CHUNK), drive, target)
    assert (
        out == f"Downloading 7 chunks of {CHUNK} bytes starting at {4 * CHUNK}: ....... completed\n"
    )
    assert target.read_bytes() == data
    assert api.info(drive)["read:bytes"] == str(len(data) - 4 * CHUNK)


def test_an_interrupted_download_resumes_with_the_printed_offset(
    api: ApiDaemon, tmp_path: Path
) -> None:
    data = os.urandom(16 * 1024 * 1024)
    drive = drive_holding(api, data)
    target = tmp_path / "image"
    process = subprocess.Popen(
        [*WITH_CTRL_C, str(BIN / "openhosting-download"), "-c", str(CHUNK), "-p", "2", drive,
         str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=api.env(),
    )  # fmt: skip
    err = interrupt_mid_transfer(process)
    match = re.search(r"Restart with '-o ([0-9]+)' to resume the download", err)
    assert match, err
    offset = int(match.group(1))
    assert 0 < offset < len(data) and offset % CHUNK == 0
    # Chunks are written in order: the file holds what came before the offset (a chunk that
    # was being written when Ctrl-C came may follow), and resuming from its size (no -o)
    # starts at or after the offset, never before a gap.
    size = target.stat().st_size
    assert size >= offset and target.read_bytes()[:offset] == data[:offset]
    start = size - size % CHUNK
    out = api.check("openhosting-download", "-c", str(CHUNK), drive, target)
    assert out.startswith(f"Downloading {(len(data) - start) // CHUNK} chunks of {CHUNK} bytes"
                          f" starting at {start}: ")  # fmt: skip
    assert target.read_bytes() == data


def test_a_missing_drive_is_reported_as_not_found(api: ApiDaemon, tmp_path: Path) -> None:
    nowhere = "00000000-0000-4000-8000-000000000000"
    done = api.run("openhosting-download", nowhere, tmp_path / "image")
    assert done.returncode != 0
    assert done.stderr.decode().strip() == f"Drive {nowhere} not found"
    assert done.stdout == b""


def test_a_block_device_can_be_the_target(api: ApiDaemon, tmp_path: Path) -> None:
    data = os.urandom(100_000) + bytes(400_000) + os.urandom(12_000)  # 1000 sectors
    drive = drive_holding(api, data)
    disk = tmp_path / "disk"
    disk.write_bytes(b"\xff" * len(data))  # zeros must be written over, not skipped
    with loop_device(disk) as device:
        out = api.check("openhosting-download", "-c", str(CHUNK), drive, device)
    assert out.startswith("Downloading 8 chunks")
    assert disk.read_bytes() == data


def test_a_block_device_smaller_than_the_drive_is_refused_before_any_chunk(
    api: ApiDaemon, tmp_path: Path
) -> None:
    # Before: the chunks that fit were fetched, the next failed with ENOSPC ("OSError: [Errno
    # 28] No space left on device"), and the '-o' printed failed the same way.
    drive = drive_holding(api, os.urandom(4 * CHUNK), "none")
    image = tmp_path / "disk"
    image.write_bytes(bytes(2 * CHUNK))
    with loop_device(image) as device:
        done = api.run("openhosting-download", "-c", str(CHUNK), drive, device)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        f"{device} holds {2 * CHUNK} bytes: too small for drive {drive} ({4 * CHUNK} bytes)\n"
    )
    assert api.info(drive)["read:requests"] == "0"
    assert image.read_bytes() == bytes(2 * CHUNK)


def test_both_tools_wait_out_a_platform_that_caps_transfers_at_once(tmp_path: Path) -> None:
    """With at most 2 transfers per account, 8 chunks at a time get 429 `busy` answers: the
    tools wait as told and send them again, and the round trip is whole."""
    env = {"OH_API_MAX_TRANSFERS_PER_USER": "2", "OH_LOG_LEVEL": "info"}  # requests logged
    capped = ApiDaemon(tmp_path / "daemon", env=env)
    try:
        image = tmp_path / "image.raw"
        image.write_bytes(os.urandom(40 * CHUNK + 1234))
        out = capped.check("openhosting-upload", "-e", "none", "-c", str(CHUNK), "-p", "8", image)
        drive = out.split()[2]  # "Created drive UUID of size N"
        target = tmp_path / "copy.raw"
        capped.check("openhosting-download", "-c", str(CHUNK), "-p", "8", drive, target)
        assert target.read_bytes() == image.read_bytes()
        log = capped.log.read_text()
        refused = re.findall(r"path=/drives/\S+/(write|read)/\S+ status=429", log)
        assert {"write", "read"} <= set(refused)  # both tools met the cap
    finally:
        capped.stop()
