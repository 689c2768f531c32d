"""Raw drive write over loopback: a 1 GiB body streamed by curl to `/drives/D/write` of a plain
drive, and of an encrypted one (every byte AES-XTS encrypted before it is written), against
`dd bs=4M conv=fdatasync` of the same bytes to the same filesystem. Both writes are
acknowledged only once durable (fdatasync before the 204), as dd's time includes its
fdatasync. Goals: plain ≥ 0.7×, encrypted ≥ 0.5×."""

import subprocess
import time
from pathlib import Path

from bench.drive_data import (
    ROUNDS,
    bench_size,
    create_drive,
    curl_upload,
    destroy_drive,
    drop_dirty_pages,
    make_data_file,
    throughput,
)
from bench.harness import report, running_daemon, work_directory


def dd_seconds(source: Path, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fdatasync", "status=none"],
        check=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - started


def run() -> float:
    size = bench_size()
    with work_directory("drive-write") as work_dir, running_daemon(work_dir) as daemon:
        data = make_data_file(work_dir / "data.bin", size)
        headers = {"Authorization": daemon.auth_header}
        plain: list[float] = []
        encrypted: list[float] = []
        anchor: list[float] = []
        for _ in range(ROUNDS):
            # A fresh drive and a fresh dd target each round: both allocate their blocks.
            for cipher, times in (("none", plain), ("aes-xts-plain", encrypted)):
                drive = create_drive(daemon, size, cipher)
                drop_dirty_pages()
                times.append(curl_upload(f"{daemon.url}/drives/{drive}/write", data, headers))
                destroy_drive(daemon, drive)
            target = work_dir / "dd.out"
            drop_dirty_pages()
            anchor.append(dd_seconds(data, target))
            target.unlink()
    dd_rate = throughput(size, min(anchor))
    report(
        f"drive write, encrypted, {size >> 20} MiB (curl -T)", throughput(size, min(encrypted)),
        "dd bs=4M conv=fdatasync", dd_rate, "MB/s", "≥ 0.5",
    )  # fmt: skip
    return report(
        f"drive write, plain, {size >> 20} MiB (curl -T)", throughput(size, min(plain)),
        "dd bs=4M conv=fdatasync", dd_rate, "MB/s", "≥ 0.7",
    )  # fmt: skip
