"""`openhosting-upload`: drive images uploaded in gzipped chunks, with the original tool's
output, byte-identical round trips, zero chunks skipped on new drives, and resumption."""

import gzip
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
    run_in_terminal,
    sha256_of,
    wait_for_output,
)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CHUNK = 65536


def make_image(path: Path, *pieces: bytes | int) -> Path:
    """A file of `pieces`: bytes are data, an int that many zero bytes left as a hole."""
    with path.open("wb") as file:
        for piece in pieces:
            if isinstance(piece, int):
                file.seek(piece, os.SEEK_CUR)
            else:
                file.write(piece)
        file.truncate()
    return path


def created_drive(stdout: str) -> str:
    match = re.match(f"Created drive ({UUID}) of size [0-9]+\n", stdout)
    assert match, stdout
    return match.group(1)


def downloaded(api: ApiDaemon, drive: str, path: Path) -> Path:
    api.check("openhosting-download", "-c", str(CHUNK), drive, path)
    return path


def test_seed_upload_prints_exactly_the_original_transcript(api: ApiDaemon, tmp_path: Path) -> None:
    image = make_image(tmp_path / "image.raw", os.urandom(10_000_000))
    done = api.run("openhosting-upload", "image.raw", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert re.fullmatch(
        f"Created drive {UUID} of size 10000000\n"
        "Uploading 2 chunks of 5242880 bytes: .. completed\n",
        out,
    ), out
    assert done.stderr == b""
    info = api.info(created_drive(out))
    assert info["name"] == "image.raw" and info["size"] == "10000000"
    assert info["claim:type"] == "exclusive" and info["encryption:cipher"] == "aes-xts-plain"
    assert sha256_of(downloaded(api, created_drive(out), tmp_path / "back")) == sha256_of(image)


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
@pytest.mark.parametrize("shape", ["odd-size", "sparse"])
def test_upload_then_download_is_byte_identical(
    api: ApiDaemon, tmp_path: Path, cipher: str, shape: str
) -> None:
    if shape == "odd-size":  # not a multiple of the chunk (nor of a 512-byte sector)
        image = make_image(tmp_path / "image", os.urandom(1_000_003))
    else:
        image = make_image(
            tmp_path / "image", os.urandom(100_000), 600_000, os.urandom(50_000), 300_000
        )
    size = image.stat().st_size
    count = -(-size // CHUNK)
    done = api.run("openhosting-upload", "-c", str(CHUNK), "-e", cipher, image)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert out.endswith(f"\nUploading {count} chunks of {CHUNK} bytes: {'.' * count} completed\n")
    drive = created_drive(out)
    assert api.info(drive)["encryption:cipher"] == cipher
    back = downloaded(api, drive, tmp_path / "back")
    assert back.stat().st_size == size
    assert sha256_of(back) == sha256_of(image)


def test_chunks_of_zeros_are_not_sent_to_a_drive_this_run_created(
    api: ApiDaemon, tmp_path: Path
) -> None:
    data = os.urandom(CHUNK)
    image = make_image(tmp_path / "image", data, 3 * CHUNK, data, 2 * CHUNK, data[:100])
    done = api.run("openhosting-upload", "-c", str(CHUNK), image)
    assert done.returncode == 0, done.stderr
    drive = created_drive(done.stdout.decode())
    assert api.info(drive)["write:requests"] == "3"  # 8 chunks, 5 of them zeros
    assert sha256_of(downloaded(api, drive, tmp_path / "back")) == sha256_of(image)


def test_an_existing_drive_receives_every_chunk_zeros_included(
    api: ApiDaemon, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "image", os.urandom(CHUNK), 2 * CHUNK + 10)
    size = image.stat().st_size
    drive = api.create_drive(size, cipher="none")
    api.check("openhosting", "-c", "drives", drive, "write", input=b"\xff" * size)
    done = api.run("openhosting-upload", "-c", str(CHUNK), "-d", drive, image)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == (
        f"Using existing drive {drive}\nUploading 4 chunks of {CHUNK} bytes: .... completed\n"
    )
    assert sha256_of(downloaded(api, drive, tmp_path / "back")) == sha256_of(image)


def test_gzipped_input_uploads_its_decompressed_content(api: ApiDaemon, tmp_path: Path) -> None:
    content = os.urandom(200_000) + bytes(300_000) + b"text " * 20_000
    packed = tmp_path / "image.gz"  # two gzip members, as `cat a.gz b.gz` makes
    packed.write_bytes(gzip.compress(content[:123_457]) + gzip.compress(content[123_457:]))
    done = api.run("openhosting-upload", "-z", "-c", str(CHUNK), packed)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert f"of size {len(content)}\n" in out
    assert (downloaded(api, created_drive(out), tmp_path / "back")).read_bytes() == content


def test_a_file_that_is_not_gzip_is_refused_with_z(api: ApiDaemon, tmp_path: Path) -> None:
    image = make_image(tmp_path / "image", b"not gzip at all")
    done = api.run("openhosting-upload", "-z", image)
    assert done.returncode != 0
    assert "not in gzip format" in done.stderr.decode()
    assert done.stdout == b""


def test_gzipped_input_from_a_pipe_is_refused_before_a_drive_is_made(
    api: ApiDaemon, tmp_path: Path
) -> None:
    # Before: the pipe was read to its end for the size, a drive of that size was made, then
    # the upload found the pipe empty ("the gzip stream ended early"), as would every resume.
    packed = tmp_path / "image.gz"
    packed.write_bytes(gzip.compress(os.urandom(3 * CHUNK)))
    before = api.check("openhosting", "drives", "list")
    done = subprocess.run(
        ["bash", "-c", f'exec "$0" -z <(cat {packed})', str(BIN / "openhosting-upload")],
        capture_output=True, text=True, env=api.env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.endswith(
        ": not a regular file or a block device (-z reads it twice: once for the drive's size,"
        " then to upload it)\n"
    )
    assert api.check("openhosting", "drives", "list") == before


def test_name_shared_and_tier_options_shape_the_new_drive(api: ApiDaemon, tmp_path: Path) -> None:
    image = make_image(tmp_path / "image", os.urandom(1000))
    done = api.run("openhosting-upload", "-n", "My Disk", "-s", "-t", "ssd", "-e", "none", image)
    assert done.returncode == 0, done.stderr
    info = api.info(created_drive(done.stdout.decode()))
    assert info["name"] == "My Disk" and info["claim:type"] == "shared"
    assert info["tier"] == "ssd" and info["encryption:cipher"] == "none"


@pytest.mark.parametrize("option", ["file", "-n"])
def test_a_newline_in_the_name_stays_in_the_name_and_adds_no_key(
    api: ApiDaemon, tmp_path: Path, option: str
) -> None:
    # Before: the name went into the body as it was, so a file called (or -n given)
    # "disk\nencryption:cipher none" made an unencrypted drive, its name "disk".
    name = "disk\nencryption:cipher none"
    image = make_image(tmp_path / (name if option == "file" else "image"), os.urandom(1000))
    args = ["-n", name] if option == "-n" else []
    done = api.run("openhosting-upload", *args, image)
    assert done.returncode == 0, done.stderr
    info = api.info(created_drive(done.stdout.decode()))
    assert info["encryption:cipher"] == "aes-xts-plain"  # the platform's default
    assert info["name"] == "disk\\nencryption:cipher none"  # the text codec's escape


def test_an_existing_drive_too_small_is_refused_before_sending(
    api: ApiDaemon, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "image", os.urandom(5000))
    drive = api.create_drive(4096)
    done = api.run("openhosting-upload", "-d", drive, image)
    assert done.returncode != 0
    assert "too small" in done.stderr.decode()
    assert api.info(drive)["write:requests"] == "0"


def test_an_offset_without_a_drive_is_refused_before_creating_one(
    api: ApiDaemon, tmp_path: Path
) -> None:
    # It made a new drive and sent only the image's end: its first 5 MiB read as zeros, and
    # the tool said "completed" with status 0.
    image = make_image(tmp_path / "image", os.urandom(3 * CHUNK))
    before = api.check("openhosting", "drives", "list")
    done = api.run("openhosting-upload", "-c", str(CHUNK), "-o", str(CHUNK), image)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        "-o resumes an upload into the drive it was writing: name that drive with -d\n"
    )
    assert api.check("openhosting", "drives", "list") == before


@pytest.mark.parametrize("option", [["-e", "none"], ["-t", "ssd"]], ids=["cipher", "tier"])
def test_a_new_drive_option_of_ours_with_an_existing_drive_is_refused(
    api: ApiDaemon, tmp_path: Path, option: list[str]
) -> None:
    # It wrote into the drive of -d in that drive's own cipher and tier, saying nothing.
    drive = api.create_drive(CHUNK)
    image = make_image(tmp_path / "image", os.urandom(CHUNK))
    done = api.run("openhosting-upload", "-d", drive, *option, image)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == "-e and -t choose a new drive's cipher and tier: not with -d\n"
    assert api.info(drive)["write:requests"] == "0"


def test_a_missing_file_or_drive_is_explained(api: ApiDaemon, tmp_path: Path) -> None:
    missing_file = api.run("openhosting-upload", tmp_path / "nothing.raw")
    assert missing_file.returncode != 0 and b"No such file" in missing_file.stderr
    image = make_image(tmp_path / "image", b"x")
    nowhere = "00000000-0000-4000-8000-000000000000"
    missing_drive = api.run("openhosting-upload", "-d", nowhere, image)
    assert missing_drive.returncode != 0
    assert missing_drive.stderr.decode().strip() == f"Drive {nowhere} not found"


def resume_command(stderr: str) -> tuple[str, int]:
    match = re.search(f"Restart with '-d ({UUID}) -o ([0-9]+)' to resume the upload", stderr)
    assert match, stderr
    return match.group(1), int(match.group(2))


def resume_and_compare(api: ApiDaemon, image: Path, drive: str, offset: int, back: Path) -> None:
    size = image.stat().st_size
    assert 0 < offset < size and offset % CHUNK == 0
    out = api.check("openhosting-upload", "-c", str(CHUNK), "-d", drive, "-o", str(offset), image)
    count = -(-(size - offset) // CHUNK)
    assert out == (
        f"Using existing drive {drive}\n"
        f"Uploading {count} chunks of {CHUNK} bytes: {'.' * count} completed\n"
    )
    assert sha256_of(downloaded(api, drive, back)) == sha256_of(image)


def start_upload(api: ApiDaemon, image: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*WITH_CTRL_C, str(BIN / "openhosting-upload"), "-c", str(CHUNK), "-p", "2", str(image)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=api.env(),
    )  # fmt: skip


def test_an_interrupted_upload_resumes_with_the_printed_command(
    api: ApiDaemon, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "image", os.urandom(16 * 1024 * 1024))
    process = start_upload(api, image)
    err = interrupt_mid_transfer(process)
    drive, offset = resume_command(err)
    resume_and_compare(api, image, drive, offset, tmp_path / "back")


def test_an_upload_failing_half_way_resumes_once_the_api_is_back(tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "own")  # this one is stopped under the upload
    try:
        image = make_image(tmp_path / "image", os.urandom(16 * 1024 * 1024))
        process = start_upload(daemon, image)
        try:
            seen = wait_for_output(process, b"....")
            daemon.stop()
            rest, err = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 1
        assert (seen + rest).endswith(b"E\n")
        assert "Failed to write chunk" in err.decode()
        drive, offset = resume_command(err.decode())
        daemon.start()
        resume_and_compare(daemon, image, drive, offset, tmp_path / "back")
    finally:
        daemon.stop()


def test_a_terminal_shows_a_progress_bar_instead_of_dots(api: ApiDaemon, tmp_path: Path) -> None:
    image = make_image(tmp_path / "image", os.urandom(20 * CHUNK))
    argv = [str(BIN / "openhosting-upload"), "-c", str(CHUNK), str(image)]
    status, shown = run_in_terminal(argv, api.env(COLUMNS="100"))
    assert status == 0, shown
    assert b"Uploading 20 chunks of 65536 bytes: [" in shown
    assert b"\r" in shown and b"100%" in shown and b"/s" in shown
    assert shown.rstrip().endswith(b"completed")
    assert b"...." not in shown


def test_a_block_device_uploads_like_a_file(api: ApiDaemon, tmp_path: Path) -> None:
    image = make_image(tmp_path / "image", os.urandom(300_000), 212_000)  # 1000 sectors
    with loop_device(image) as device:
        done = api.run("openhosting-upload", "-c", str(CHUNK), device)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "of size 512000\n" in out
    assert sha256_of(downloaded(api, created_drive(out), tmp_path / "back")) == sha256_of(image)
