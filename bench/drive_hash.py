"""Hash of a drive: `GET /drives/D/hash` of a 1 GiB drive full of data, plain and encrypted,
against `sha256sum` of the same bytes as a file, both with a warm page cache. Goals: ≥ 0.8×
plain, ≥ 0.5× encrypted (the daemon decrypts every sector before hashing it)."""

import subprocess
import time
import urllib.request
from pathlib import Path

from bench.drive_data import ROUNDS, bench_size, make_data_file, throughput
from bench.drive_read import drive_holding
from bench.harness import Daemon, report, running_daemon, work_directory

TIMEOUT = 600


def our_hash(daemon: Daemon, drive: str) -> tuple[str, float]:
    """The drive's hash from the daemon and the seconds the request took."""
    request = urllib.request.Request(
        f"{daemon.url}/drives/{drive}/hash", headers={"Authorization": daemon.auth_header}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        text = response.read().decode()
    seconds = time.perf_counter() - started
    answer = dict(line.split(" ", 1) for line in text.splitlines())
    return answer["hash"], seconds


def sha256sum(path: Path) -> tuple[str, float]:
    """What `sha256sum` prints for the file and the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(
        ["sha256sum", str(path)], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    return done.stdout.split()[0], time.perf_counter() - started


def compare_hashes(daemon: Daemon, data: Path, cipher: str) -> tuple[float, float]:
    """Best seconds of our hash of a drive of `cipher` holding `data`, and of sha256sum of
    `data`; each run's hash is checked against sha256sum's."""
    drive = drive_holding(daemon, data, cipher)
    expected, _ = sha256sum(data)  # also warms the page cache
    our_hash(daemon, drive)
    ours, anchor = [], []
    for _ in range(ROUNDS):
        digest, seconds = our_hash(daemon, drive)
        if digest != expected:
            raise RuntimeError(f"hash of drive {drive} is {digest}, sha256sum says {expected}")
        ours.append(seconds)
        anchor.append(sha256sum(data)[1])
    return min(ours), min(anchor)


def run() -> float:
    size = bench_size()
    with work_directory("drive-hash") as work_dir, running_daemon(work_dir) as daemon:
        data = make_data_file(work_dir / "data.bin", size)
        plain = compare_hashes(daemon, data, "none")
        encrypted = compare_hashes(daemon, data, "aes-xts-plain")
    ratio = report(
        f"drive hash, plain, {size >> 20} MiB", throughput(size, plain[0]),
        "sha256sum of the file", throughput(size, plain[1]), "MB/s", "≥ 0.8",
    )  # fmt: skip
    report(
        f"drive hash, encrypted, {size >> 20} MiB", throughput(size, encrypted[0]),
        "sha256sum of the file", throughput(size, encrypted[1]), "MB/s", "≥ 0.5",
    )  # fmt: skip
    return ratio
