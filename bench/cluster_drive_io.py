"""Drive bytes through the API node to a host agent: a plain drive on an agent's host (a real
`openhosting-agent` over mutual TLS on loopback, the fake hypervisor: only its drives are
used) against a plain drive of the API node's own host, in one run, the same daemon. Writes
are curl `-T` of the test data to `/drives/D/write` (acknowledged once durable), reads curl
of `/drives/D/read` into /dev/null with a warm page cache. Goal (issue 15): remote ≥ 0.8× the
local drive, for writes and for reads."""

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

from bench.drive_data import (
    ROUNDS,
    bench_size,
    create_drive,
    curl_download,
    curl_upload,
    destroy_drive,
    drop_dirty_pages,
    make_data_file,
    throughput,
)
from bench.harness import BIN, Daemon, report, work_directory
from openhosting.agent.pki import Bundle, add_host, init_cluster
from testbed.agent_process import agent_process
from testbed.daemon_process import DaemonProcess, create_user

AGENT_HOST = "hv-bench"
ENV = {
    "OH_HYPERVISOR_DRIVER": "fake",
    "OH_HOST_NAME": "zz-api",
    "OH_STORAGE_DEFAULT_CIPHER": "none",
}


def api_text(daemon: Daemon, path: str, body: bytes = b"") -> str:
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-X", "POST", "-H",
         f"Authorization: {daemon.auth_header}", "--data-binary", "@-", f"{daemon.url}{path}"],
        input=body, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.decode()


def host_of(daemon: Daemon, drive: str) -> str:
    for line in api_text(daemon, f"/drives/{drive}/info").splitlines():
        if line.startswith("host "):
            return line.split(" ", 1)[1]
    return ""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of process `pid` so far, all its threads (/proc/PID/stat)."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_of_each(daemon: Daemon, size: int) -> dict[str, str]:
    """A drive on the agent's host and one on the API node's, by `avoid`: host → drive."""
    first = create_drive(daemon, size, "none")
    text = api_text(
        daemon,
        "/drives/create",
        f"name b\nsize {size}\nencryption:cipher none\navoid {first}\n".encode(),
    )
    second = next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("drive "))
    drives = {host_of(daemon, first): first, host_of(daemon, second): second}
    assert set(drives) == {AGENT_HOST, "zz-api"}, drives
    return drives


def run() -> float:
    size = bench_size()
    with work_directory("cluster-drive-io") as work_dir, ExitStack() as stack:
        state = work_dir / "state"
        account = create_user(state, env=ENV)
        init_cluster(state)
        add_host(state, AGENT_HOST, work_dir / "bundle")
        agent = stack.enter_context(
            agent_process(work_dir / "agent", Bundle.in_directory(work_dir / "bundle", "host"))
        )
        subprocess.run(
            [str(BIN / "openhosting-admin"), "--state-dir", str(state), "host", "set",
             AGENT_HOST, "--agent", agent.address],
            capture_output=True, timeout=60, check=True, env={**os.environ, **ENV},
        )  # fmt: skip
        process = DaemonProcess(state, work_dir / "daemon.log", env=ENV)
        stack.callback(process.stop)
        daemon = Daemon(account.user, account.secret, process.url, process.port, state,
                        process.log, process)  # fmt: skip
        data = make_data_file(work_dir / "data.bin", size)
        headers = {"Authorization": daemon.auth_header}
        writes: dict[str, list[float]] = {AGENT_HOST: [], "zz-api": []}
        reads: dict[str, list[float]] = {AGENT_HOST: [], "zz-api": []}
        # CPU seconds of the agent and of the API node over the remote reads (warm ones only).
        read_cpu = {"agent": 0.0, "API node": 0.0}
        for _ in range(ROUNDS):
            # Fresh drives each round: both writes allocate their blocks.
            drives = one_of_each(daemon, size)
            for host, drive in drives.items():
                drop_dirty_pages()
                writes[host].append(
                    curl_upload(f"{daemon.url}/drives/{drive}/write", data, headers)
                )
            for host, drive in drives.items():
                url = f"{daemon.url}/drives/{drive}/read"
                curl_download(url, size, headers)  # warms the page cache
                before = cpu_seconds(agent.pid), cpu_seconds(process.pid)
                reads[host].append(curl_download(url, size, headers))
                if host == AGENT_HOST:
                    read_cpu["agent"] += cpu_seconds(agent.pid) - before[0]
                    read_cpu["API node"] += cpu_seconds(process.pid) - before[1]
            for drive in drives.values():
                destroy_drive(daemon, drive)
    report(
        f"drive write to an agent's host, plain, {size >> 20} MiB (curl -T)",
        throughput(size, min(writes[AGENT_HOST])),
        "the API node's own drive", throughput(size, min(writes["zz-api"])), "MB/s", "≥ 0.8",
    )  # fmt: skip
    gigabytes = ROUNDS * size / (1 << 30)
    print(
        "CPU per GiB read from the agent's host: "
        + ", ".join(f"{name} {seconds / gigabytes:.2f} s" for name, seconds in read_cpu.items()),
        flush=True,
    )
    return report(
        f"drive read from an agent's host, plain, {size >> 20} MiB (curl)",
        throughput(size, min(reads[AGENT_HOST])),
        "the API node's own drive", throughput(size, min(reads["zz-api"])), "MB/s", "≥ 0.8",
    )  # fmt: skip
