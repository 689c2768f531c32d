"""Read of an encrypted drive: `/drives/D/read` of 1 GiB into /dev/null with curl, against
nginx serving the same bytes with sendfile (goal ≥ 0.5×), and against the simplest correct
decryption: one `cryptography` AES-XTS call per 512-byte sector over the drive's ciphertext
(goal ≥ 5×). Shown beside them, for scale: `openssl speed` of AES-256-XTS on one core over
1 MiB buffers, the cipher alone (what the read's whole pipeline spends besides it is
reading and sending), and beside that the decryption alone of each XTS engine this CPU runs
(`storage/xts.py`), in-process over 4 MiB pieces as a read decrypts them."""

import os
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.drive_data import MIB, throughput
from bench.drive_read import compare_reads
from bench.harness import Daemon, report, running_daemon, work_directory
from openhosting.config import load_config
from openhosting.services.platform import open_platform
from openhosting.storage.luks import LuksHeader, unlock_luks1
from openhosting.storage.xts import ENGINES, XtsCipher
from openhosting.store import drives as drive_store

SECTOR = 512
# The per-sector loop runs at a few tens of MB/s: it decrypts a sample, not the whole drive.
LOOP_SAMPLE = 64 * MIB
LOOP_SECONDS = 20.0


def _only_drive(daemon: Daemon) -> tuple[Path, LuksHeader]:
    """The container file of the daemon's one drive and its unlocked header, in-process."""
    config = load_config(env={}, overrides={"state_dir": str(daemon.state_dir)})
    platform = open_platform(config)
    try:
        with platform.engine.connect() as connection:
            (row,) = drive_store.drives_of(connection, daemon.user)
        passphrase = platform.drives.passphrase_of(row)
        assert passphrase is not None
        path = platform.drives.files.path_of(row.uuid)
    finally:
        platform.close()
    return path, unlock_luks1(path, passphrase)


def per_sector_rate(daemon: Daemon, expected: Path) -> float:
    """MB/s of decrypting the drive's first sectors with one `cryptography` call each; the
    plaintext is checked against the data that was written."""
    path, header = _only_drive(daemon)
    length = min(LOOP_SAMPLE, expected.stat().st_size)
    with path.open("rb") as container:
        container.seek(header.payload_offset)
        ciphertext = container.read(length)
    key = algorithms.AES(header.master_key)
    plain = bytearray(length)
    started = time.perf_counter()
    done = 0
    while done < length and time.perf_counter() - started < LOOP_SECONDS:
        tweak = (done // SECTOR).to_bytes(16, "little")  # plain64: the sector number
        decryptor = Cipher(key, modes.XTS(tweak)).decryptor()
        plain[done : done + SECTOR] = decryptor.update(ciphertext[done : done + SECTOR])
        decryptor.finalize()
        done += SECTOR
    seconds = time.perf_counter() - started
    with expected.open("rb") as data:
        if plain[:done] != data.read(done):
            raise RuntimeError("the per-sector loop did not decrypt the drive's bytes")
    return throughput(done, seconds)


def openssl_xts_rate() -> float:
    """MB/s of `openssl speed` AES-256-XTS over 1 MiB buffers, one core, one second."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "1", "-bytes", "1048576", "-evp", "aes-256-xts"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        if line.upper().startswith("AES-256-XTS"):
            return float(line.split()[-1].rstrip("k")) * 1000 / 1e6  # its unit: 1000 bytes/s
    raise RuntimeError(f"no AES-256-XTS figure in openssl speed's output:\n{out}")


ENGINE_PIECE = 4 * MIB
ENGINE_SECONDS = 2.0


def engine_rates() -> dict[str, float]:
    """MB/s of each XTS engine decrypting one 4 MiB piece over and over (warm in the
    cache, as a read's piece is after its `preadv`), on one core, for ENGINE_SECONDS each."""
    cipher_input = bytearray(os.urandom(ENGINE_PIECE))
    rates = {}
    for engine in ENGINES:
        cipher = XtsCipher(os.urandom(64), engine)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < ENGINE_SECONDS:
            cipher.crypt_in_place(cipher_input, done // SECTOR, encrypt=False)
            done += ENGINE_PIECE
        rates[engine] = throughput(done, time.perf_counter() - started)
    return rates


def run() -> float:
    with work_directory("drive-read-encrypted") as work_dir, running_daemon(work_dir) as daemon:
        size, ours, anchor = compare_reads(work_dir, daemon, "aes-xts-plain")
        loop = per_sector_rate(daemon, work_dir / "www" / "data.bin")
    ours_rate = throughput(size, ours)
    ratio = report(
        f"drive read, encrypted, {size >> 20} MiB (curl)", ours_rate,
        "nginx sendfile", throughput(size, anchor), "MB/s", "≥ 0.5",
    )  # fmt: skip
    openssl_rate = openssl_xts_rate()
    report(
        f"drive read, encrypted, {size >> 20} MiB (curl)", ours_rate,
        "openssl speed aes-256-xts, 1 MiB, one core", openssl_rate, "MB/s", "info",
    )  # fmt: skip
    for engine, rate in engine_rates().items():
        report(
            f"XTS decryption alone, engine {engine}, 4 MiB pieces, one core", rate,
            "openssl speed aes-256-xts, 1 MiB, one core", openssl_rate, "MB/s", "info",
        )  # fmt: skip
    report(
        f"drive read, encrypted, {size >> 20} MiB (curl)", ours_rate,
        "per-sector cryptography AES-XTS loop", loop, "MB/s", "≥ 5",
    )  # fmt: skip
    return ratio
