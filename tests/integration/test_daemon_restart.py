"""VMs outlive the daemon (ARCHITECTURE.md, "Servers"): a real `openhostingd` is stopped with
SIGTERM or killed with SIGKILL while servers run; the next daemon adopts the VMs that still
run and reconciles those that ended while no daemon watched (API.md §5's stop rules)."""

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openhosting.hypervisor import process
from openhosting.wire.text import parse_properties
from tests.conftest import kill_leftover_vms
from tests.test_daemon import free_port

BIN = Path(sys.executable).parent
TIMEOUT = 30


class Daemon:
    """`openhostingd` on a loopback port, in a session of its own, logging to a file."""

    def __init__(self, state_dir: Path, run_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "OH_FIRST_USER": "0",
            "OH_HYPERVISOR_RUN_DIR": str(run_dir),
            "OH_HYPERVISOR_ACCELERATOR": "tcg",
        }
        with log.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(BIN / "openhostingd"), "--state-dir", str(state_dir),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log_file, stderr=log_file, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.process.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(self.url, timeout=1)
            except urllib.error.HTTPError:
                return  # answering (401): ready, VMs adopted (recover() runs before listening)
            except OSError:
                assert time.monotonic() < deadline, "the daemon did not start listening"
                time.sleep(0.05)

    def end(self, signum: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        self.process.wait(timeout=TIMEOUT)


class Api:
    """Text-mode requests as the shell tools make them."""

    def __init__(self, user: str, secret: str) -> None:
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.url = ""

    def call(self, path: str, body: bytes | None = None) -> tuple[int, str]:
        request = urllib.request.Request(
            self.url + path, data=body, headers=self.headers, method="POST" if body else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def properties(self, path: str, body: bytes | None = None) -> dict[str, str]:
        status, text = self.call(path, body)
        assert status == 200, f"{path}: {status} {text}"
        return parse_properties(text)

    def info(self, server: str) -> dict[str, str]:
        return self.properties(f"/servers/{server}/info")

    def wait_info(
        self, server: str, until: Callable[[dict[str, str]], bool], timeout: float = TIMEOUT
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not until(info := self.info(server)):
            assert time.monotonic() < deadline, info
            time.sleep(0.1)
        return info


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path, list[Daemon]]]:
    """A state directory, a short run directory, and the daemons started on them; at the end
    every daemon and every QEMU found through the run directory's pidfiles is killed."""
    run_dir = Path(tempfile.mkdtemp(prefix="ohr-", dir="/tmp"))
    # QEMU may run as another user (hypervisor.run_as): it must reach its own run directory.
    run_dir.chmod(0o755)
    daemons: list[Daemon] = []
    try:
        yield tmp_path / "state", run_dir, daemons
    finally:
        for daemon in daemons:
            daemon.end(signal.SIGKILL)
        kill_leftover_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def qemu_pid(run_dir: Path, server: str) -> int:
    pid = process.adopt(run_dir / server, server)
    assert pid is not None, f"no running QEMU for {server}"
    return pid


def wait_gone(pid: int, server: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while process.is_vm_process(pid, server):
        assert time.monotonic() < deadline, f"QEMU {pid} still runs"
        time.sleep(0.05)


def test_vms_outlive_the_daemon_and_the_next_one_reconciles_what_happened_meanwhile(
    world: tuple[Path, Path, list[Daemon]], tiny_guest_image: Path
) -> None:
    state, run_dir, daemons = world
    log = state.parent / "daemon.log"
    created = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "user", "create"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    fields = dict(line.split(" ", 1) for line in created.splitlines() if " " in line)
    api = Api(fields["user"], fields["secret"])

    def start_daemon() -> None:
        daemons.append(Daemon(state, run_dir, log))
        api.url = daemons[-1].url

    start_daemon()
    image = tiny_guest_image.read_bytes()
    drive = api.properties(
        "/drives/create", f"size {len(image)}\nencryption:cipher none\n".encode()
    )["drive"]
    assert api.call(f"/drives/{drive}/write", image)[0] == 204
    # Only the first boots a guest: the others need no drive to be a running VM.
    bodies = {
        "kept": f"name kept\ncpu 1000\nmem 256\npersistent true\nide:0:0 {drive}\nboot ide:0:0",
        "crashed": "name crashed\ncpu 500\nmem 32\npersistent true",
        "ended": "name ended\ncpu 500\nmem 32\npersistent true",
        "temporary": "name temporary\ncpu 500\nmem 32\npersistent false",
    }
    servers = {
        name: api.properties("/servers/create", body.encode())["server"]
        for name, body in bodies.items()
    }
    kept = servers["kept"]
    before = api.wait_info(kept, lambda info: int(info["ide:0:0:read:bytes"]) > 0)
    pids = {name: qemu_pid(run_dir, server) for name, server in servers.items()}

    # SIGTERM: the daemon lets go of its VMs without stopping them; the next one adopts them.
    daemons[-1].end(signal.SIGTERM)
    for name, server in servers.items():
        assert process.is_vm_process(pids[name], server), f"{name} did not survive SIGTERM"
    start_daemon()
    for server in servers.values():
        assert api.info(server)["status"] == "active"

    # SIGKILL: the daemon dies holding every QMP connection. While no daemon runs, one VM
    # crashes, one exits cleanly (QEMU's SIGTERM: a shutdown), one non-persistent crashes.
    daemons[-1].end(signal.SIGKILL)
    os.kill(pids["crashed"], signal.SIGKILL)
    os.kill(pids["ended"], signal.SIGTERM)
    os.kill(pids["temporary"], signal.SIGKILL)
    for name in ("crashed", "ended", "temporary"):
        wait_gone(pids[name], servers[name])
    start_daemon()

    after = api.info(kept)
    assert after["status"] == "active"
    assert qemu_pid(run_dir, kept) == pids["kept"]
    assert after["started"] == before["started"]
    # Counters come live from the adopted QEMU: cumulative since it started.
    assert int(after["ide:0:0:read:bytes"]) >= int(before["ide:0:0:read:bytes"]) > 0
    assert api.properties(f"/drives/{drive}/info")["claimed"].endswith(f":guest:{kept}:ide:0:0")
    assert api.info(servers["crashed"])["status"] == "dead"
    assert api.info(servers["ended"])["status"] == "stopped"
    assert api.call(f"/servers/{servers['temporary']}/info")[0] == 404

    # The adopted VM obeys: stop powers it off, and the persistent server is stopped.
    assert api.call(f"/servers/{kept}/stop", b" ")[0] == 204
    stopped = api.info(kept)
    assert stopped["status"] == "stopped" and "started" not in stopped
    assert not process.is_vm_process(pids["kept"], kept)
    assert "claimed" not in api.properties(f"/drives/{drive}/info")
    log_text = log.read_text()
    assert log_text.count("event=server_adopted") == 4 + 1  # all four, then the survivor
