"""What the drive benchmarks share: the test data, drives made over the API, curl as the one
client for the daemon and its anchors, and a throw-away nginx serving a file with sendfile."""

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.harness import Daemon, free_port, stop_process, wait_listening
from openhosting.wire.sizes import parse_size

MIB = 1024 * 1024
DEFAULT_SIZE = "1G"
BLOCK = 16 * MIB
# Each figure is the best of this many alternating runs: the machine is shared, and the best
# run is the one least disturbed by others.
ROUNDS = int(os.environ.get("OH_BENCH_ROUNDS", "3"))
CURL_TIMEOUT = 600


def bench_size() -> int:
    """Bytes of test data: `OH_BENCH_DRIVE_SIZE` (e.g. `64M` for a quick trial), default 1 GiB,
    rounded down to whole 16 MiB blocks."""
    size = parse_size(os.environ.get("OH_BENCH_DRIVE_SIZE", DEFAULT_SIZE), "OH_BENCH_DRIVE_SIZE")
    return max(BLOCK, size - size % BLOCK)


def data_blocks(size: int, seed: int = 1) -> Iterator[bytes]:
    """`size` bytes (a multiple of 16 MiB) of random-looking data, fast to make.

    One random block of 4-bit values (so gzip halves it, roughly as it does a disk image),
    then every block is that one XORed with its own 64-bit pattern, so no two blocks are
    equal and generating costs little more than a memory copy.
    """
    base = np.random.default_rng(seed).integers(0, 16, BLOCK, dtype=np.uint8).view(np.uint64)
    for index in range(size // BLOCK):
        pattern = np.uint64((index * 0x9E3779B97F4A7C15 + seed) % 2**64) & np.uint64(
            0x0F0F0F0F0F0F0F0F
        )
        yield (base ^ pattern).tobytes()


def make_data_file(path: Path, size: int) -> Path:
    """Write the test data to `path` (real data, not a hole) and leave it in the page cache."""
    with path.open("wb") as file:
        for block in data_blocks(size):
            file.write(block)
    return path


def api_post(daemon: Daemon, path: str, body: bytes = b"") -> str:
    request = urllib.request.Request(
        f"{daemon.url}{path}", data=body, headers={"Authorization": daemon.auth_header}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def create_drive(daemon: Daemon, size: int, cipher: str, tier: str = "disk") -> str:
    """A new drive of `size` bytes in `tier`; returns its UUID."""
    body = f"name bench\nsize {size}\nencryption:cipher {cipher}\ntier {tier}\n"
    text = api_post(daemon, "/drives/create", body.encode())
    for line in text.splitlines():
        if line.startswith("drive "):
            return line.split()[1]
    raise RuntimeError(f"no drive in the create answer:\n{text}")


def destroy_drive(daemon: Daemon, drive: str) -> None:
    api_post(daemon, f"/drives/{drive}/destroy")


def _curl(args: list[str], expect_status: str, expect_bytes: int) -> float:
    """Run curl; check its status and byte count; return its own transfer time in seconds."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(CURL_TIMEOUT), *args],
        capture_output=True, text=True, timeout=CURL_TIMEOUT + 30, check=True,
    )  # fmt: skip
    status, count, seconds = result.stdout.split()
    if status != expect_status or int(float(count)) != expect_bytes:
        raise RuntimeError(f"curl {args[-1]}: status {status}, {count} bytes: {result.stderr}")
    return float(seconds)


def curl_upload(url: str, path: Path, headers: dict[str, str]) -> float:
    """POST the file as a streamed raw body (`-T`, no `Expect: 100-continue`); seconds."""
    args = ["-T", str(path), "-X", "POST", "-H", "Expect:", "-o", "/dev/null"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    args += ["-w", "%{http_code} %{size_upload} %{time_total}", url]
    return _curl(args, "204", path.stat().st_size)


def curl_download(url: str, size: int, headers: dict[str, str]) -> float:
    """GET `url` into /dev/null, checking that `size` bytes came; seconds."""
    args = ["-o", "/dev/null"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    args += ["-w", "%{http_code} %{size_download} %{time_total}", url]
    return _curl(args, "200", size)


def throughput(size: int, seconds: float) -> float:
    """MB/s (10^6 bytes per second)."""
    return size / seconds / 1e6


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


@contextmanager
def running_nginx(work_dir: Path, root: Path) -> Iterator[str]:
    """Debian's nginx serving the files of `root` with sendfile on a loopback port; yields
    its base URL and stops it (by its PID) afterwards."""
    prefix = work_dir / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, port=port, root=root))
    with (prefix / "stderr.log").open("ab") as log:
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(prefix)], stdout=log, stderr=log
        )
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, signal.SIGQUIT, timeout=10)  # SIGQUIT: nginx's graceful stop


def drop_dirty_pages() -> None:
    """Flush every dirty page (ours and other processes') so one run's write-back does not
    slow the next one."""
    os.sync()
    time.sleep(0.5)
