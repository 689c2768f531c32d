"""LUKS1 containers: what we create QEMU opens, what QEMU writes we read, and the reverse."""

import json
import os
import random
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from openhosting.storage.luks import (
    LuksError,
    LuksVolume,
    format_luks1,
    payload_offset,
    read_luks1_header,
    unlock_luks1,
)

MiB = 1024 * 1024
PASSPHRASE = secrets.token_hex(32).encode()  # what the platform generates per drive
TIMEOUT = 60

needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("qemu-io")), reason="needs qemu-utils"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=TIMEOUT)


def secret_object(tmp_path: Path, passphrase: bytes = PASSPHRASE) -> str:
    """A QEMU secret read from a file, so the passphrase is not on the command line."""
    secret = tmp_path / "secret"
    secret.write_bytes(passphrase)
    return f"secret,id=sec0,file={secret}"


def image_opts(path: Path) -> str:
    return "driver=luks,key-secret=sec0,file.filename=" + str(path).replace(",", ",,")


def qemu_read_all(path: Path, tmp_path: Path) -> bytes:
    """The whole payload as QEMU decrypts it."""
    out = tmp_path / "qemu-view.raw"
    run(
        "qemu-img", "convert", "--object", secret_object(tmp_path),
        "--image-opts", image_opts(path), "-O", "raw", str(out),
    )  # fmt: skip
    data = out.read_bytes()
    out.unlink()
    return data


def qemu_io(path: Path, tmp_path: Path, *commands: str) -> None:
    args = ["qemu-io", "--object", secret_object(tmp_path), "--image-opts", image_opts(path)]
    for command in commands:
        args += ["-c", command]
    result = run(*args)
    output = (result.stdout + result.stderr).lower()
    assert "error" not in output and "failed" not in output, output


def qemu_img_create_luks(path: Path, tmp_path: Path) -> None:
    args = (
        "qemu-img", "create", "-q", "-f", "luks", "--object", secret_object(tmp_path),
        "-o", "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,"
        "hash-alg=sha256,iter-time=10",
        str(path), "16M",
    )  # fmt: skip
    # QEMU times PBKDF2 with the thread's CPU clock, which is too coarse on some hosts (this
    # one fails about one run in three with "Unable to get accurate CPU usage"): retry.
    for _ in range(8):
        result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
        if result.returncode == 0 or "accurate CPU usage" not in result.stderr:
            break
        path.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def container(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "drive.luks"
    return path, format_luks1(path, PASSPHRASE, 8 * MiB)


def test_header_is_luks1_aes_xts_plain64_sha256_with_slot_0_active(
    container: tuple[Path, bytes],
) -> None:
    path, _ = container
    raw = path.read_bytes()[:592]
    assert raw[:6] == b"LUKS\xba\xbe"
    assert struct.unpack(">H", raw[6:8]) == (1,)
    assert [raw[at : at + 32].rstrip(b"\0") for at in (8, 40, 72)] == [
        b"aes",
        b"xts-plain64",
        b"sha256",
    ]
    assert struct.unpack(">II", raw[104:112]) == (4096, 64)  # payload sector, key bytes
    slots = [struct.unpack(">II32sII", raw[208 + 48 * i : 256 + 48 * i]) for i in range(8)]
    assert [slot[0] for slot in slots] == [0x00AC71F3] + [0x0000DEAD] * 7
    assert [slot[3] for slot in slots] == [8 + 504 * i for i in range(8)]
    assert all(slot[4] == 4000 for slot in slots)
    assert slots[0][1] == 1000
    header = read_luks1_header(path)
    assert header.payload_offset == payload_offset(path) == 2 * MiB
    assert header.key_slots[0].active and not any(s.active for s in header.key_slots[1:])


def test_new_container_is_sparse_with_the_payload_after_the_header(tmp_path: Path) -> None:
    path = tmp_path / "big.luks"
    format_luks1(path, PASSPHRASE, 1024 * MiB)
    assert path.stat().st_size == 2 * MiB + 1024 * MiB
    assert path.stat().st_blocks * 512 < 1 * MiB
    assert path.stat().st_mode & 0o777 == 0o600


def test_unlock_recovers_the_master_key_that_format_returned(
    container: tuple[Path, bytes],
) -> None:
    path, master_key = container
    header = unlock_luks1(path, PASSPHRASE)
    assert len(master_key) == 64
    assert header.master_key == master_key
    assert master_key.hex() not in repr(header)


def test_wrong_passphrase_raises_luks_error(container: tuple[Path, bytes]) -> None:
    path, _ = container
    with pytest.raises(LuksError, match="opens no key slot"):
        unlock_luks1(path, b"not-the-passphrase")
    with pytest.raises(LuksError):
        LuksVolume.open(path, PASSPHRASE[:-1])


@pytest.mark.parametrize(
    "content", [b"", bytes(4096), os.urandom(4096)], ids=["empty", "zeros", "random"]
)
def test_files_that_are_not_luks1_raise_luks_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    with pytest.raises(LuksError, match="not a LUKS"):
        unlock_luks1(path, PASSPHRASE)


def test_format_refuses_to_overwrite_an_existing_file(container: tuple[Path, bytes]) -> None:
    path, master_key = container
    with pytest.raises(FileExistsError):
        format_luks1(path, PASSPHRASE, MiB)
    assert unlock_luks1(path, PASSPHRASE).master_key == master_key


@pytest.mark.parametrize("passphrase", [b"", b"with\0nul", b"\xff\xfe not utf-8"])
def test_passphrases_qemu_could_not_use_are_refused(tmp_path: Path, passphrase: bytes) -> None:
    with pytest.raises(ValueError):
        format_luks1(tmp_path / "x.luks", passphrase, MiB)
    assert not (tmp_path / "x.luks").exists()


@pytest.mark.parametrize("size", [-512, 1, 1000])
def test_payload_size_must_be_whole_sectors(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError):
        format_luks1(tmp_path / "x.luks", PASSPHRASE, size)


def test_never_written_bytes_read_as_zeros(container: tuple[Path, bytes]) -> None:
    path, master_key = container
    with LuksVolume(path, master_key) as volume:
        assert volume.size == 8 * MiB
        assert volume.read_at(0, 8 * MiB) == bytes(8 * MiB)
        volume.write_at(5000, b"\x01" * 10)
        # The rest of the written sector, and the sectors around it, still read as zeros.
        assert volume.read_at(4096, 2048) == bytes(904) + b"\x01" * 10 + bytes(1134)


def test_random_reads_and_writes_match_a_byte_model(container: tuple[Path, bytes]) -> None:
    path, master_key = container
    size = 8 * MiB
    model = bytearray(size)
    rng = random.Random(1619)
    with LuksVolume(path, master_key) as volume:
        for _ in range(150):
            offset = rng.randrange(size)
            length = rng.choice([1, 17, 511, 512, 513, 4096, 70_000, 300_000])
            length = min(length, size - offset)
            if rng.random() < 0.6:
                data = rng.randbytes(length)
                volume.write_at(offset, data)
                model[offset : offset + length] = data
            else:
                assert volume.read_at(offset, length) == model[offset : offset + length]
    with LuksVolume.open(path, PASSPHRASE) as volume:
        assert volume.read_at(0, size) == model


def reference_plaintext(path: Path, master_key: bytes) -> bytes:
    """The whole payload decrypted by `cryptography`'s own XTS, one call per sector, with the
    API's rule that an all-zero (never written) sector reads as zeros: an independent
    reading to hold the bulk decryption against."""
    start = payload_offset(path)
    ciphertext = path.read_bytes()[start:]
    key = algorithms.AES(master_key)
    sectors = []
    for number in range(len(ciphertext) // 512):
        sector = ciphertext[number * 512 : (number + 1) * 512]
        if sector == bytes(512):
            sectors.append(sector)
            continue
        decryptor = Cipher(key, modes.XTS(number.to_bytes(16, "little"))).decryptor()
        sectors.append(decryptor.update(sector) + decryptor.finalize())
    return b"".join(sectors)


def test_reads_equal_a_reference_decryption_at_odd_offsets_edges_and_the_end(
    tmp_path: Path,
) -> None:
    # 3 MiB + 3 sectors: several of the cipher's inner steps (1,024 sectors), a last partial
    # one, a hole and a sector whose ciphertext begins with 16 zero bytes (still data).
    size = 3 * MiB + 3 * 512
    path = tmp_path / "drive.luks"
    master_key = format_luks1(path, PASSPHRASE, size)
    rng = random.Random(20)
    with LuksVolume(path, master_key) as volume:
        volume.write_at(0, rng.randbytes(MiB + 7))
        volume.write_at(MiB + 4096, rng.randbytes(size - MiB - 4096))
        sector = 1500
        base = volume.payload_offset + sector * 512
    with path.open("r+b") as file:
        file.seek(base)
        file.write(bytes(16))
    reference = reference_plaintext(path, master_key)
    assert reference[MiB + 512 : MiB + 1024] == bytes(512)  # the hole reads as zeros
    assert reference[sector * 512 : sector * 512 + 512] != bytes(512)
    step = 1024 * 512
    cases = [
        (0, size),
        (1, 1),
        (511, 2),
        (512, 512),
        (513, 1021),
        (step - 1, 3),
        (step - 7, 2 * step + 13),
        (sector * 512 - 5, 530),
        (MiB - 3, 4096 + 9),
        (size - 700, 700),
        (size - 1, 1),
        (size - 3 * step - 11, 5 * step),  # past the end: clamped
        (rng.randrange(size), rng.randrange(1, 200_000)),
    ]
    with LuksVolume(path, master_key) as volume:
        for offset, length in cases:
            got = volume.read_at(offset, length)
            assert got == reference[offset : offset + length], (offset, length)


def test_reads_stop_at_the_end_and_writes_past_it_are_refused(
    container: tuple[Path, bytes],
) -> None:
    path, master_key = container
    with LuksVolume(path, master_key) as volume:
        volume.write_at(8 * MiB - 3, b"end")
        assert volume.read_at(8 * MiB - 3, 100) == b"end"
        assert volume.read_at(8 * MiB, 100) == b""
        with pytest.raises(ValueError):
            volume.write_at(8 * MiB - 2, b"end")
        with pytest.raises(ValueError):
            volume.read_at(-1, 1)


def test_resize_keeps_data_and_new_space_reads_as_zeros(container: tuple[Path, bytes]) -> None:
    path, master_key = container
    data = os.urandom(3 * MiB + 123)
    with LuksVolume(path, master_key) as volume:
        volume.write_at(777, data)
        volume.resize(32 * MiB)
        assert volume.size == 32 * MiB
        assert volume.read_at(777, len(data)) == data
        assert volume.read_at(8 * MiB, 24 * MiB) == bytes(24 * MiB)
        volume.resize(4 * MiB)
        assert volume.read_at(0, 4 * MiB) == bytes(777) + data + bytes(4 * MiB - 777 - len(data))
    assert unlock_luks1(path, PASSPHRASE).master_key == master_key


def test_volume_on_a_callers_fd_leaves_it_open(container: tuple[Path, bytes]) -> None:
    path, master_key = container
    fd = os.open(path, os.O_RDWR)
    try:
        with LuksVolume(fd, master_key) as volume:  # payload offset read from the header
            volume.write_at(0, b"hello")
        os.fstat(fd)
        assert LuksVolume(fd, master_key, 2 * MiB).read_at(0, 5) == b"hello"
    finally:
        os.close(fd)


@needs_qemu
def test_qemu_img_info_reads_our_header(container: tuple[Path, bytes]) -> None:
    path, _ = container
    info = json.loads(run("qemu-img", "info", "--output=json", str(path)).stdout)
    assert info["format"] == "luks"
    assert info["virtual-size"] == 8 * MiB
    luks = info["format-specific"]["data"]
    assert (luks["cipher-alg"], luks["cipher-mode"], luks["ivgen-alg"], luks["hash-alg"]) == (
        "aes-256",
        "xts",
        "plain64",
        "sha256",
    )
    assert luks["payload-offset"] == 2 * MiB


@needs_qemu
def test_bytes_written_with_write_at_read_back_identically_through_qemu(
    container: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, master_key = container
    model = bytearray(8 * MiB)
    writes = [(1000, 70_000), (3, 1), (4 * MiB - 5, 1 * MiB + 11), (6 * MiB, 512), (7_000_001, 9)]
    with LuksVolume(path, master_key) as volume:
        for offset, length in writes:
            data = os.urandom(length)
            volume.write_at(offset, data)
            model[offset : offset + length] = data
        volume.write_at(2 * MiB, bytes(4096))  # zeros are stored as real ciphertext too
    seen = qemu_read_all(path, tmp_path)
    assert len(seen) == 8 * MiB
    # Compare whole written sectors: QEMU decrypts never-written ones to garbage.
    for offset, length in [*writes, (2 * MiB, 4096)]:
        start, end = offset // 512 * 512, -(-(offset + length) // 512) * 512
        assert seen[start:end] == model[start:end], (offset, length)


@needs_qemu
def test_bytes_written_by_qemu_io_read_back_identically_through_read_at(
    container: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, master_key = container
    with LuksVolume(path, master_key) as volume:
        volume.write_at(1 * MiB, bytes(8192))  # data under QEMU's unaligned write below
    qemu_io(
        path, tmp_path, "write -P 0xab 4096 65536", "write -P 0xcd 1049577 3000",
        "write -P 0x11 8387584 1024",
    )  # fmt: skip
    with LuksVolume.open(path, PASSPHRASE) as volume:
        assert volume.read_at(4096, 65536) == b"\xab" * 65536
        assert volume.read_at(8 * MiB - 1024, 1024) == b"\x11" * 1024
        # QEMU read-modified-wrote the edge sectors of our zeros: they stay zeros.
        assert volume.read_at(1 * MiB, 8192) == bytes(1001) + b"\xcd" * 3000 + bytes(4191)
        assert volume.read_at(0, 4096) == bytes(4096)


@needs_qemu
def test_container_made_by_qemu_img_unlocks_and_reads_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "qemu-made.luks"
    qemu_img_create_luks(path, tmp_path)
    qemu_io(path, tmp_path, "write -P 0x5a 0 8192")
    with pytest.raises(LuksError):
        unlock_luks1(path, b"wrong")
    header = unlock_luks1(path, PASSPHRASE)
    assert header.payload_offset == 4040 * 512  # QEMU's own layout, read from the header
    data = os.urandom(12_345)
    with LuksVolume(path, header.master_key) as volume:
        assert volume.size == 16 * MiB
        assert volume.read_at(0, 8192) == b"\x5a" * 8192
        assert volume.read_at(8192, 4096) == bytes(4096)
        volume.write_at(100_001, data)
    assert qemu_read_all(path, tmp_path)[100_001 : 100_001 + len(data)] == data
