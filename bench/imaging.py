"""Imaging jobs against the commands an operator would use instead.

- copy: `/drives/D/image/SRC` of a 10 GiB plain drive holding 100 MiB, against
  `cp --sparse=always` of the same drive file. Goal: ≤ 1× its time. Beside it, the floor of a
  durable copy on this disk, with no daemon: the same extents written with O_DIRECT straight
  from the page cache, then fdatasync (`direct_floor_seconds`): what the disk allows a copy
  that must be durable when it is done, against `cp`, which leaves its copy in the page cache.
- shared copy: the same copy between two drives of a tier on an XFS with reflink made for the
  run (a loop device), against `cp --sparse=always` on that file system: both share SRC's
  blocks instead of writing them (the daemon's copy durable by its `done`). Goal: ≤ 1×.
- gunzip: `/drives/D/image/STD/gunzip` of a 1 GiB gzip image stored as a standard drive,
  against ISA-L's `igzip -dc` (the fastest inflater at hand) of the same file to the same
  disk, goal ≤ 1×; `gzip -dc` beside it.

An imaging job's time runs from the POST to its `done` on the event feed, and includes the
fdatasync that makes the result durable; the anchors leave their output in the page cache, so
each is also shown with a `sync -d` of its output, the like-for-like figure. While two gunzip
jobs run, the latency of `/drives/list` is sampled to show the API stays responsive.
"""

import http.client
import json
import mmap
import os
import resource
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from isal import isal_zlib

from bench.drive_data import (
    MIB,
    ROUNDS,
    api_post,
    create_drive,
    curl_upload,
    data_blocks,
    destroy_drive,
    drop_dirty_pages,
)
from bench.harness import BIN, Daemon, report, running_daemon, work_directory
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.sparse import data_extents
from testbed.reflink_fs import reflink_filesystem

GIB = 1024 * MIB
TIMEOUT = 600
# The tier of the shared copy's drives: an XFS with reflink made for the run.
REFLINK_TIER = "xfs"
# The copies' drives: this big, holding 100 MiB.
SPARSE_SIZE = 10 * GIB


def image_seconds(daemon: Daemon, dst: str, src: str, conversion: str = "") -> float:
    """Seconds from the POST until the event feed says the job into DST is done (published
    once its bytes are durable and its row says so), as a client is told to wait for it:
    polling DST's info every few milliseconds cost the daemon and this 2-core machine CPU
    the job needed (a copy measured ~30 ms slower that way)."""
    path = f"/drives/{dst}/image/{src}" + (f"/{conversion}" if conversion else "")
    address = urlsplit(daemon.url)
    feed = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        feed.request("GET", "/events", headers={"Authorization": daemon.auth_header})
        events = feed.getresponse()
        if events.status != 200:
            raise RuntimeError(f"GET /events answered {events.status}")
        started = time.perf_counter()
        api_post(daemon, path, b" ")
        deadline = started + TIMEOUT
        while time.perf_counter() < deadline:
            line = events.readline()
            if not line:
                raise RuntimeError("the event feed ended before the job did")
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[len(b"data: ") :])
            if event.get("object") != dst or event.get("imaging") not in ("done", "failed"):
                continue
            elapsed = time.perf_counter() - started
            if event["imaging"] == "failed":
                raise RuntimeError(f"imaging failed: {event.get('error')}")
            return elapsed
        raise RuntimeError(f"imaging did not finish in {TIMEOUT} s")
    finally:
        feed.close()


def cpu_with_children(pid: int) -> float:
    """CPU seconds of `pid` and of the children it has waited for (a job may start some)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def command_seconds(command: str, output: Path) -> tuple[float, float, float]:
    """Seconds of a shell command writing `output`, without and with `sync -d` of it, and the
    CPU seconds the command used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["sh", "-c", command], check=True, timeout=TIMEOUT)
    plain = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["sync", "-d", str(output)], check=True, timeout=TIMEOUT)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return plain, time.perf_counter() - started, cpu


# The floor's writes: two of 4 MiB at once, as the daemon's copy does (storage/sparse.py).
FLOOR_PIECE = 4 * MIB
FLOOR_WRITERS = 2


def direct_floor_seconds(source: Path, target: Path) -> float:
    """Seconds to make the new file `target` a durable sparse copy of `source` the fastest
    way this disk takes a durable copy, with no daemon and no bookkeeping: `source`'s data
    extents (found with SEEK_DATA/SEEK_HOLE, as `cp` finds them) written from a read-only
    map of it in 4 MiB O_DIRECT writes, two at once, then fdatasync."""
    source_fd = os.open(source, os.O_RDONLY)
    target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    size = os.fstat(source_fd).st_size
    try:
        with (
            mmap.mmap(source_fd, size, prot=mmap.PROT_READ) as mapped,
            ThreadPoolExecutor(FLOOR_WRITERS) as writers,
        ):
            started = time.perf_counter()
            os.ftruncate(target_fd, size)
            view = memoryview(mapped)
            writes = [
                writers.submit(pwrite_all, target_fd, view[start : start + length], start)
                for first, past_last in data_extents(source_fd, 0, size)
                for start in range(first, past_last, FLOOR_PIECE)
                for length in (min(FLOOR_PIECE, past_last - start),)
            ]
            for write in writes:
                write.result()
            os.fdatasync(target_fd)
            elapsed = time.perf_counter() - started
            view.release()
        return elapsed
    finally:
        os.close(target_fd)
        os.close(source_fd)


def sparse_source(daemon: Daemon, work_dir: Path, tier: str = "disk") -> str:
    """A new plain drive of SPARSE_SIZE in `tier` holding 100 MiB in ten pieces spread over
    it."""
    size, pieces = SPARSE_SIZE, 10
    piece = work_dir / "piece.bin"
    piece.write_bytes(os.urandom(10 * MIB))
    src = create_drive(daemon, size, "none", tier)
    headers = {"Authorization": daemon.auth_header}
    for index in range(pieces):
        offset = index * (size // pieces) + index * 4096
        curl_upload(f"{daemon.url}/drives/{src}/write/{offset}", piece, headers)
    piece.unlink()
    return src


def copy_rounds(
    daemon: Daemon,
    src: str,
    source_file: Path,
    target: Path,
    tier: str,
    also: Callable[[], None] = lambda: None,
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of each round's copy of `src` into a new drive of its size in `tier`, and of
    `cp --sparse=always` of its file to `target`, without and with `sync -d`; `also` runs
    at the end of each round."""
    ours: list[float] = []
    anchor: list[float] = []
    anchor_synced: list[float] = []
    for _ in range(ROUNDS):
        dst = create_drive(daemon, SPARSE_SIZE, "none", tier)
        drop_dirty_pages()
        ours.append(image_seconds(daemon, dst, src))
        destroy_drive(daemon, dst)
        drop_dirty_pages()
        plain, synced, _cpu = command_seconds(f"cp --sparse=always {source_file} {target}", target)
        anchor.append(plain)
        anchor_synced.append(synced)
        target.unlink()
        also()
    return ours, anchor, anchor_synced


def bench_copy(daemon: Daemon, work_dir: Path) -> float:
    src = sparse_source(daemon, work_dir)
    source_file = daemon.state_dir / "drives" / f"{src}.img"
    target = work_dir / "cp.out"
    floor: list[float] = []

    def measure_floor() -> None:
        drop_dirty_pages()
        floor.append(direct_floor_seconds(source_file, target))
        target.unlink()

    ours, anchor, anchor_synced = copy_rounds(
        daemon, src, source_file, target, "disk", measure_floor
    )
    best = min(ours)
    report(
        "image copy, 10 GiB plain holding 100 MiB", best * 1000,
        "the disk's durable floor (O_DIRECT + fdatasync, no daemon)", min(floor) * 1000, "ms",
        "info",
    )  # fmt: skip
    report(
        "the disk's durable floor, the same 100 MiB", min(floor) * 1000,
        "cp --sparse=always", min(anchor) * 1000, "ms", "info",
    )  # fmt: skip
    report(
        "image copy, 10 GiB plain holding 100 MiB, incl. sync", best * 1000,
        "cp --sparse=always + sync -d", min(anchor_synced) * 1000, "ms", "info",
    )  # fmt: skip
    return report(
        "image copy, 10 GiB plain holding 100 MiB", best * 1000,
        "cp --sparse=always", min(anchor) * 1000, "ms", "≤ 1",
    )  # fmt: skip


def bench_shared_copy(daemon: Daemon, work_dir: Path, tier_dir: Path) -> float:
    """The copy of `bench_copy` within a tier on XFS with reflink (`tier_dir`), where both
    the daemon and `cp` share SRC's blocks instead of writing them."""
    src = sparse_source(daemon, work_dir, REFLINK_TIER)
    source_file = tier_dir / f"{src}.img"
    target = tier_dir / "cp.out"
    ours, anchor, anchor_synced = copy_rounds(daemon, src, source_file, target, REFLINK_TIER)
    report(
        "image copy on XFS with reflink, 10 GiB plain holding 100 MiB, incl. sync",
        min(ours) * 1000, "cp --sparse=always + sync -d", min(anchor_synced) * 1000, "ms",
        "info",
    )  # fmt: skip
    return report(
        "image copy on XFS with reflink, 10 GiB plain holding 100 MiB", min(ours) * 1000,
        "cp --sparse=always (reflinks too)", min(anchor) * 1000, "ms", "≤ 1",
    )  # fmt: skip


def make_gzip_image(path: Path, size: int) -> None:
    """A gzip image of `size` bytes: disk-like data (compresses about 2:1) and zeros."""
    compressor = isal_zlib.compressobj(3, isal_zlib.DEFLATED, 31)
    with path.open("wb") as file:
        for index, block in enumerate(data_blocks(size)):
            # A quarter of the blocks are zeros, as unused space in a disk image is.
            file.write(compressor.compress(bytes(len(block)) if index % 4 == 3 else block))
        file.write(compressor.flush())


def add_standard(daemon: Daemon, image: Path) -> str:
    out = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(daemon.state_dir), "standard",
         "add", str(image), "--name", "bench image", "--gzip"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines())["drive"]


def bench_gunzip(daemon: Daemon, work_dir: Path) -> float:
    size = GIB
    image = work_dir / "image.gz"
    make_gzip_image(image, size)
    standard = add_standard(daemon, image)
    target = work_dir / "gunzip.out"
    ours: list[float] = []
    encrypted: list[float] = []
    # CPU seconds: the daemon's (every thread, and any child it waited for) for a plain job,
    # igzip's for its run. On the shared 2-core machine the wall times swing with the others'
    # load; CPU time does not.
    ours_cpu: list[float] = []
    igzip_cpu: list[float] = []
    anchors: dict[str, tuple[list[float], list[float]]] = {"igzip": ([], []), "gzip": ([], [])}
    pid = daemon.process.process.pid
    for _ in range(ROUNDS):
        for cipher, times in (("none", ours), ("aes-xts-plain", encrypted)):
            dst = create_drive(daemon, size, cipher)
            drop_dirty_pages()
            cpu = cpu_with_children(pid)
            times.append(image_seconds(daemon, dst, standard, "gunzip"))
            if cipher == "none":
                ours_cpu.append(cpu_with_children(pid) - cpu)
            destroy_drive(daemon, dst)
        for tool, (plain_times, synced_times) in anchors.items():
            drop_dirty_pages()
            plain, synced, cpu = command_seconds(f"{tool} -dc {image} > {target}", target)
            plain_times.append(plain)
            synced_times.append(synced)
            if tool == "igzip":
                igzip_cpu.append(cpu)
            target.unlink()
    igzip, igzip_synced = (min(times) for times in anchors["igzip"])
    gzip = min(anchors["gzip"][0])
    report(
        "image gunzip CPU, 1 GiB image, plain drive (the daemon's)", min(ours_cpu),
        "igzip -dc's CPU", min(igzip_cpu), "s", "info",
    )  # fmt: skip
    report(
        "image gunzip, 1 GiB image, encrypted drive", min(encrypted), "igzip -dc", igzip,
        "s", "info",
    )  # fmt: skip
    report(
        "image gunzip, 1 GiB image, plain drive, incl. sync", min(ours),
        "igzip -dc + sync -d", igzip_synced, "s", "info",
    )  # fmt: skip
    report(
        "image gunzip, 1 GiB image, plain drive", min(ours), "gzip -dc", gzip, "s", "info",
    )  # fmt: skip
    ratio = report(
        "image gunzip, 1 GiB image, plain drive", min(ours), "igzip -dc", igzip, "s", "≤ 1",
    )  # fmt: skip
    responsiveness(daemon, standard, size)
    return ratio


def responsiveness(daemon: Daemon, standard: str, size: int) -> None:
    """The slowest and median `/drives/list` while two gunzip jobs run."""
    targets = [create_drive(daemon, size, "aes-xts-plain") for _ in range(2)]
    latencies: list[float] = []
    done = threading.Event()

    def sample() -> None:
        request = urllib.request.Request(
            f"{daemon.url}/drives/list", headers={"Authorization": daemon.auth_header}
        )
        while not done.is_set() and len(latencies) < 100_000:
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        runs = [
            threading.Thread(target=image_seconds, args=(daemon, dst, standard, "gunzip"))
            for dst in targets
        ]
        for run_thread in runs:
            run_thread.start()
        for run_thread in runs:
            run_thread.join(timeout=TIMEOUT)
    finally:
        done.set()
        sampler.join(timeout=60)
    latencies.sort()
    print(
        f"/drives/list during two encrypted gunzip jobs: {len(latencies)} requests,"
        f" median {latencies[len(latencies) // 2] * 1000:.1f} ms,"
        f" slowest {latencies[-1] * 1000:.1f} ms",
        flush=True,
    )


def run() -> float:
    with (
        work_directory("imaging") as work_dir,
        reflink_filesystem(work_dir) as tier_dir,
        running_daemon(work_dir, {"OH_STORAGE_TIERS": f"{REFLINK_TIER}={tier_dir}"}) as daemon,
    ):
        bench_copy(daemon, work_dir)
        bench_shared_copy(daemon, work_dir, tier_dir)
        return bench_gunzip(daemon, work_dir)
