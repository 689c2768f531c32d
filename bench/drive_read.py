"""Read of a plain drive: `/drives/D/read` of 1 GiB into /dev/null with curl, against nginx
serving the same bytes from a file with sendfile, both on loopback with a warm page cache.
Goal: ≥ 0.8×."""

from pathlib import Path

from bench.drive_data import (
    ROUNDS,
    bench_size,
    create_drive,
    curl_download,
    curl_upload,
    make_data_file,
    running_nginx,
    throughput,
)
from bench.harness import Daemon, report, running_daemon, work_directory


def drive_holding(daemon: Daemon, data: Path, cipher: str) -> str:
    """A new drive holding the bytes of `data` (written over the API)."""
    size = data.stat().st_size
    drive = create_drive(daemon, size, cipher)
    curl_upload(f"{daemon.url}/drives/{drive}/write", data, {"Authorization": daemon.auth_header})
    return drive


def compare_reads(work_dir: Path, daemon: Daemon, cipher: str) -> tuple[int, float, float]:
    """Best read seconds of a drive of `cipher` holding the test data, and of nginx serving
    the data file; returns (size, ours, nginx)."""
    size = bench_size()
    www = work_dir / "www"
    www.mkdir()
    data = make_data_file(www / "data.bin", size)
    drive = drive_holding(daemon, data, cipher)
    ours_url = f"{daemon.url}/drives/{drive}/read"
    auth = {"Authorization": daemon.auth_header}
    with running_nginx(work_dir, www) as nginx_url:
        # One untimed read of each warms the page cache and both servers.
        curl_download(ours_url, size, auth)
        curl_download(f"{nginx_url}/data.bin", size, {})
        ours, anchor = [], []
        for _ in range(ROUNDS):
            ours.append(curl_download(ours_url, size, auth))
            anchor.append(curl_download(f"{nginx_url}/data.bin", size, {}))
    return size, min(ours), min(anchor)


def run() -> float:
    with work_directory("drive-read") as work_dir, running_daemon(work_dir) as daemon:
        size, ours, anchor = compare_reads(work_dir, daemon, "none")
    return report(
        f"drive read, plain, {size >> 20} MiB (curl)", throughput(size, ours),
        "nginx sendfile", throughput(size, anchor), "MB/s", "≥ 0.8",
    )  # fmt: skip
