"""A real `openhosting-agent` in a subprocess on loopback, for the tests that cross the wire:
a cluster CA and bundles made as the admin tool makes them, a start that returns once the
agent listens (on a port the kernel chose), and a stop by its PID that cannot hang.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from openhosting.agent.pki import Bundle, add_host, control_bundle, init_cluster

BIN = Path(sys.executable).parent
LISTEN_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Cluster:
    """A cluster CA in `state` (the control plane's state directory) and its bundles."""

    state: Path

    @property
    def control(self) -> Bundle:
        return control_bundle(self.state)

    def host(self, name: str) -> Bundle:
        """The bundle of host `name`, issued on first use."""
        directory = self.state.parent / f"bundle-{name}"
        if not directory.exists():
            add_host(self.state, name, directory)
        return Bundle.in_directory(directory, "host")


def make_cluster(directory: Path) -> Cluster:
    state = directory / "control-state"
    init_cluster(state)
    return Cluster(state)


@dataclass(frozen=True)
class AgentProcess:
    pid: int
    address: str  # 127.0.0.1:PORT
    log: Path


@contextmanager
def agent_process(
    directory: Path,
    bundle: Bundle,
    *,
    driver: str = "fake",
    env: Mapping[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    netns: str | None = None,
) -> Iterator[AgentProcess]:
    """An agent over `driver` with its state in `directory`, presenting `bundle`, listening
    on `listen` (a port the kernel chose unless given: the same one again for a restarted
    agent), in network namespace `netns` if given (`ip netns exec`, which becomes the agent:
    the PID is the agent's); stopped by its PID (SIGTERM, then SIGKILL) when the block
    ends."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "agent.log"
    environment = {
        **os.environ,
        "OH_HYPERVISOR_DRIVER": driver,
        "OH_HYPERVISOR_ACCELERATOR": "tcg",
        "OH_HYPERVISOR_RUN_AS": "",
        "OH_HYPERVISOR_STOP_TIMEOUT": "5",
        "OH_HYPERVISOR_RUN_DIR": str(directory / "run"),
        **(env or {}),
    }
    command = [
        *(["ip", "netns", "exec", netns] if netns else []),
        str(BIN / "openhosting-agent"),
        "--state-dir", str(directory / "state"),
        "--listen", listen,
        "--tls-dir", str(bundle.cert.parent),
    ]  # fmt: skip
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=environment)
    try:
        address = _listening(process, log)
        yield AgentProcess(process.pid, address, log)
    finally:
        _stop(process)


def _listening(process: subprocess.Popen[bytes], log: Path) -> str:
    """The address from the agent's `listening HOST:PORT` line (bounded wait)."""
    assert process.stdout is not None
    deadline = time.monotonic() + LISTEN_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, left))
        chunk = os.read(process.stdout.fileno(), 256) if ready else b""
        if not chunk:
            raise AssertionError(f"the agent did not listen: {log.read_text()[-2000:]}")
        line += chunk
    word, _, address = line.decode().strip().partition(" ")
    assert word == "listening", line
    return address


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
