"""The load campaign: one daemon holding 1,000 drives and 100 stopped servers, N clients for
T seconds sending every kind of command with realistic weights (mostly info and lists, some
writes and lifecycle). Figures: throughput, p50/p99/p99.9 latency per command class, 5xx
(must be 0), the daemon's RSS and open file descriptors at the start and the end (RSS may
grow by at most RSS_GROWTH_BOUND, and by at most RSS_TAIL_BOUND in the run's second half:
it levels off; the descriptors must come back to where they were)."""

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.reliability import checkers
from bench.reliability.table import CampaignResult
from testbed.daemon_process import Api, DaemonProcess, create_user

RSS_GROWTH_BOUND = 64 * 1024 * 1024
FD_SETTLE_SECONDS = 10.0
RSS_SAMPLE_SECONDS = 10.0
# Measured over 180 s (docs/reliability.md): RSS grows fast at first, then levels off
# (+40 MiB in the first half, +12 in the second); a leak would grow as fast late as early.
RSS_TAIL_BOUND = 24 * 1024 * 1024
DRIVE_SIZE = 1024 * 1024

Request = tuple[str, str, bytes | None]  # (command class, path, body)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def settled_fds(pid: int, timeout: float = FD_SETTLE_SECONDS) -> int:
    """The daemon's descriptor count once closed connections have gone (two equal looks
    half a second apart, or the last look after `timeout`)."""
    deadline = time.monotonic() + timeout
    count = open_fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (again := open_fds(pid)) == count:
            return count
        count = again
    return count


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


class Workload:
    """The weighted mix of requests over the platform's objects."""

    def __init__(self, drives: list[str], servers: list[str], rng: random.Random) -> None:
        self.drives, self.servers, self.rng = drives, servers, rng
        self.seq = 0
        self.mix: list[tuple[int, Callable[[], Request]]] = [
            (20, lambda: ("drive info", f"/drives/{self.drive()}/info", None)),
            (12, lambda: ("server info", f"/servers/{self.server()}/info", None)),
            (10, lambda: ("drive list", "/drives/list", None)),
            (6, lambda: ("server list", "/servers/list", None)),
            (4, lambda: ("resource list", "/resources/list", None)),
            (3, lambda: ("account info", "/account/info", None)),
            (1, lambda: ("drive info all", "/drives/info", None)),
            (1, lambda: ("server info all", "/servers/info", None)),
            (10, self.read),
            (10, self.write),
            (
                4,
                lambda: (
                    "drive set",
                    f"/drives/{self.drive()}/set",
                    f"name n{self.rng.randrange(1000)}".encode(),
                ),
            ),
            (
                4,
                lambda: (
                    "server set",
                    f"/servers/{self.server()}/set",
                    f"cpu {self.rng.choice([500, 1000])}".encode(),
                ),
            ),
            (
                2,
                lambda: (
                    "drive create",
                    "/drives/create",
                    b"size 64k\nencryption:cipher none\nname load",
                ),
            ),
            (2, lambda: ("server create", "/servers/create/stopped", b"name l\ncpu 500\nmem 64")),
        ]

    def drive(self) -> str:
        return self.rng.choice(self.drives)

    def server(self) -> str:
        return self.rng.choice(self.servers)

    def read(self) -> Request:
        offset = self.rng.randrange(DRIVE_SIZE // 4096) * 4096
        return "drive read 4k", f"/drives/{self.drive()}/read/{offset}/4096", None

    def write(self) -> Request:
        offset = self.rng.randrange(DRIVE_SIZE // 4096) * 4096
        return "drive write 4k", f"/drives/{self.drive()}/write/{offset}", bytes(4096)

    def next(self) -> Request:
        weights = [weight for weight, _ in self.mix]
        return self.rng.choices([make for _, make in self.mix], weights)[0]()


def populate(api: Api, drives: int, servers: int) -> tuple[list[str], list[str]]:
    """Create the drives (one in ten encrypted) and stopped servers, 8 requests at a time."""

    def drive(index: int) -> str:
        cipher = "aes-xts-plain" if index % 10 == 0 else "none"
        body = f"name d{index}\nsize {DRIVE_SIZE}\nencryption:cipher {cipher}".encode()
        return api.properties("/drives/create", body)["drive"]

    def server(index: int) -> str:
        body = f"name s{index}\ncpu 1000\nmem 256".encode()
        return api.properties("/servers/create/stopped", body)["server"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(drive, range(drives))), list(pool.map(server, range(servers)))


def run(
    work_dir: Path, seed: int, seconds: float, clients: int, drives: int, servers: int
) -> CampaignResult:
    state = work_dir / "state"
    account = create_user(state)
    # The load's own user is rate-limited by nothing but the platform itself.
    # Its run directory in the campaign's, removed with it (the default outlives the run).
    run_dir = {"OH_HYPERVISOR_RUN_DIR": str(work_dir / "run")}
    daemon = DaemonProcess(state, work_dir / "daemon.log", env=run_dir)
    result = CampaignResult("load")
    try:
        api = Api(account, daemon.url, timeout=60)
        began = time.monotonic()
        drive_ids, server_ids = populate(api, drives, servers)
        result.notes.append(
            f"populated {drives} drives and {servers} servers in {time.monotonic() - began:.0f} s"
        )
        fds_start = settled_fds(daemon.pid)
        rss_start = rss_bytes(daemon.pid)
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def client(index: int) -> None:
            workload = Workload(drive_ids, server_ids, random.Random(seed * 100 + index))
            mine: dict[str, list[float]] = defaultdict(list)
            while time.monotonic() < deadline:
                kind, path, body = workload.next()
                sent = time.monotonic()
                try:
                    status, _, answer = api.call(path, body)
                except OSError as error:
                    with lock:
                        errors.append(f"{kind} {path}: {error!r}")
                    continue
                mine[kind].append(time.monotonic() - sent)
                if status >= 500 or status in (401, 404, 405):
                    with lock:
                        errors.append(f"{kind} {path}: {status} {answer[:100]!r}")
            with lock:
                for kind, values in mine.items():
                    latencies[kind] += values

        samples: list[int] = []  # the daemon's RSS every RSS_SAMPLE_SECONDS

        def sample_rss() -> None:
            while time.monotonic() < deadline:
                samples.append(rss_bytes(daemon.pid))
                time.sleep(min(RSS_SAMPLE_SECONDS, max(0.0, deadline - time.monotonic())))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        threads.append(threading.Thread(target=sample_rss))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        elapsed = time.monotonic() - started
        # Connections the clients closed are closed by the daemon within moments.
        fds_end = settled_fds(daemon.pid)
        rss_end = rss_bytes(daemon.pid)
        total = sum(map(len, latencies.values()))
        result.operations = total
        result.violations += errors[:20]
        if len(errors) > 20:
            result.violations.append(f"... and {len(errors) - 20} more failed requests")
        result.violations += checkers.check_daemon_resources(
            (rss_start, rss_end), (fds_start, fds_end), RSS_GROWTH_BOUND
        )
        result.notes.append(
            f"{clients} clients, {elapsed:.0f} s: {total / elapsed:.0f} requests/s;"
            f" RSS {rss_start >> 20} → {rss_end >> 20} MiB; fds {fds_start} → {fds_end}"
        )
        result.violations += checkers.check_rss_levels([*samples, rss_end], RSS_TAIL_BOUND)
        result.notes.append(
            f"RSS every {RSS_SAMPLE_SECONDS:.0f} s (MiB): "
            + " ".join(str(v >> 20) for v in samples)
        )
        for kind in sorted(latencies):
            values = sorted(latencies[kind])
            result.notes.append(
                f"  {kind:<16} n={len(values):<6} p50 {percentile(values, 0.5) * 1000:7.1f} ms"
                f"  p99 {percentile(values, 0.99) * 1000:7.1f} ms"
                f"  p99.9 {percentile(values, 0.999) * 1000:7.1f} ms"
            )
        # One last look: the daemon answers and still lists every drive.
        listed = api.call("/drives/list")
        if listed.status != 200 or len(listed.body.split()) < drives:
            result.violations.append(f"after the load /drives/list: {listed.status}")
    finally:
        daemon.stop()
    return result
