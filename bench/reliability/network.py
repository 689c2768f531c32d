"""The network campaign: bridge mode's DHCP server (dnsmasq) SIGKILLed at random moments
while a guest runs. The daemon runs in bridge mode with its bridges, taps, dnsmasq and QEMU in
a network namespace that the campaign creates and deletes (so no packet reaches the host's
network); one tiny guest (QEMU under TCG) holds a DHCP lease. After each kill: a new dnsmasq
runs within RESTART_TIMEOUT (the daemon looks every 5 s), the guest renews its lease from it
(udhcpc told to renew at once) and gets the same address, and the server stays `active` with
that address. The campaigns' other rounds run in user mode (passt), where there is no
dnsmasq."""

import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bench.reliability.table import CampaignResult
from testbed.build_guest import LEASE_MARKER, READY_MARKER, build_tiny_guest
from testbed.console_guest import BOOT_TIMEOUT, wait_for_serial
from testbed.daemon_process import Api, DaemonProcess, create_user
from testbed.leftovers import kill_leftover_vms
from testbed.serial_console import read_serial_log

RESTART_TIMEOUT = 15.0  # the daemon's watch runs every 5 s; TCG and a shared machine
RENEW_TIMEOUT = 30.0
KILL_GAP = (1.0, 6.0)  # seconds between a renewal and the next kill, drawn from the seed


@contextmanager
def network_namespace() -> Iterator[str]:
    """A new namespace `oh-rel-XXXXXX` with loopback up; deleted with every process in it."""
    name = f"oh-rel-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        for pid in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
        ).stdout.split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def dnsmasq_pids(run_dir: Path) -> list[int]:
    """The dnsmasq processes that the daemon of `run_dir` started (its pidfile is there)."""
    marker = f"--pid-file={run_dir}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                if b"dnsmasq" in command.split(b"\0", 1)[0] and marker in command:
                    pids.append(int(entry.name))
    return pids


def run(work_dir: Path, seed: int, seconds: float) -> CampaignResult:
    result = CampaignResult("network")
    if os.geteuid() != 0:
        result.notes.append("skipped: network namespaces and bridges need root")
        return result
    # Short: QEMU's unix socket paths must fit in 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="ohn-", dir="/tmp"))
    run_dir.chmod(0o755)
    daemon = None
    try:
        with network_namespace() as namespace:
            state = work_dir / "state"
            api = Api(create_user(state))
            env = {
                "OH_NETWORK_MODE": "bridge",
                "OH_NETWORK_NAMESPACE": namespace,
                "OH_NETWORK_LEASE_SECONDS": "120",
                "OH_HYPERVISOR_RUN_DIR": str(run_dir),
                "OH_HYPERVISOR_ACCELERATOR": "tcg",
            }
            daemon = DaemonProcess(state, work_dir / "daemon.log", env=env)
            api.url = daemon.url
            DhcpKills(api, run_dir, random.Random(seed), result).run(seconds)
            daemon.stop()
    finally:
        if daemon is not None:
            daemon.stop()
        kill_leftover_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


class DhcpKills:
    def __init__(self, api: Api, run_dir: Path, rng: random.Random, result: CampaignResult) -> None:
        self.api, self.run_dir, self.rng, self.result = api, run_dir, rng, result
        self.server = ""
        self.address = ""

    def call(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        status, _, answer = self.api.call(path, body)
        self.result.operations += 1
        if status >= 500:
            self.result.violations.append(f"{path}: {status} {answer[:200]!r}")
        return status, answer

    @property
    def serial_log(self) -> Path:
        return self.run_dir / self.server / "serial.log"

    def leases(self) -> list[str]:
        return re.findall(rf"{LEASE_MARKER} \S+ \S+ ([0-9.]+)", read_serial_log(self.serial_log))

    def run(self, seconds: float) -> None:
        image = build_tiny_guest().read_bytes()
        boot = self.api.properties(
            "/drives/create", f"name boot\nsize {len(image)}\nencryption:cipher none".encode()
        )["drive"]
        status, _, answer = self.api.call(f"/drives/{boot}/write", image)
        assert status == 204, answer
        created = self.api.properties(
            "/servers/create",
            f"name dhcp\ncpu 2000\nmem 128\nide:0:0 {boot}\nboot ide:0:0\n"
            "nic:0:model e1000\nnic:0:dhcp auto\n".encode(),
        )
        self.server, self.address = created["server"], created["nic:0:dhcp:ip"]
        wait_for_serial(self.serial_log, f"{LEASE_MARKER} ", timeout=BOOT_TIMEOUT)
        wait_for_serial(self.serial_log, READY_MARKER)

        kills = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.result.violations:
            time.sleep(self.rng.uniform(*KILL_GAP))
            self.kill_and_check()
            kills += 1
        self.call(f"/servers/{self.server}/stop", b"")
        self.result.notes.append(
            f"bridge mode in namespace: dnsmasq SIGKILLed {kills} times, restarted and the"
            f" guest's lease renewed ({self.address}) after each"
        )

    def kill_and_check(self) -> None:
        pids = dnsmasq_pids(self.run_dir)
        if len(pids) != 1:
            self.result.violations.append(f"before a kill, dnsmasq processes {pids}")
            return
        os.kill(pids[0], signal.SIGKILL)
        self.result.faults += 1
        deadline = time.monotonic() + RESTART_TIMEOUT
        while (again := dnsmasq_pids(self.run_dir)) in ([], pids):
            if time.monotonic() > deadline:
                self.result.violations.append(
                    f"dnsmasq not started again {RESTART_TIMEOUT:.0f} s after its SIGKILL"
                )
                return
            time.sleep(0.2)
        # The guest renews now (not at half-lease) and must get its address from the new one.
        renewed = len(self.leases())
        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(10)
            console.connect(str(self.run_dir / self.server / "console.sock"))
            console.sendall(b"kill -USR1 $(pidof udhcpc)\n")
        deadline = time.monotonic() + RENEW_TIMEOUT
        while len(leases := self.leases()) <= renewed:
            if time.monotonic() > deadline:
                self.result.violations.append(
                    f"the guest's lease was not renewed from dnsmasq {again} within"
                    f" {RENEW_TIMEOUT:.0f} s"
                )
                return
            time.sleep(0.2)
        self.result.operations += 1  # a renewal answered
        if leases[-1] != self.address:
            self.result.violations.append(f"renewed {leases[-1]}, the server has {self.address}")
        status, answer = self.call(f"/servers/{self.server}/info")
        if status != 200 or b"status active" not in answer or self.address.encode() not in answer:
            self.result.violations.append(f"server after a dnsmasq kill: {answer[:300]!r}")
