"""A network namespace per test, created and removed by the test, so that bridges, taps,
dnsmasq and guests' traffic never reach the host's own network."""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

NETNS_DIR = Path("/run/netns")


def processes_in(namespace: str) -> list[int]:
    """The pids of processes living in `namespace` (all started by the test that made it)."""
    try:
        pinned = os.stat(NETNS_DIR / namespace)
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            theirs = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (pinned.st_dev, pinned.st_ino):
            pids.append(int(entry.name))
    return pids


def kill_processes_in(namespace: str, timeout: float = 5.0) -> None:
    for pid in processes_in(namespace):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while processes_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh namespace `oh-test-XXXXXX` with loopback up; removed with all it holds."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"oh-test-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        kill_processes_in(name)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def link_names(namespace: str) -> set[str]:
    output = subprocess.run(
        ["ip", "-n", namespace, "-o", "link", "show"],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return {line.split(":")[1].strip().split("@")[0] for line in output.splitlines()}


def neighbour(namespace: str, address: str) -> str:
    """The entry for `address` in `namespace`'s neighbour table, as `ip neigh` shows it."""
    done = subprocess.run(
        ["ip", "-n", namespace, "neigh", "show", address],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout


_CLIENT = """\
import socket, sys
kind, address, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if kind == "tcp":
        c = socket.create_connection((address, port), timeout=timeout)
        print(c.recv(5).decode())
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(timeout)
        c.sendto(b"hi", (address, port)); print(c.recv(5).decode())
except OSError as error:
    print(type(error).__name__)
"""


def answer_from(namespace: str, kind: str, address: str, port: int, timeout: float = 1.0) -> str:
    """The first 5 characters `address`:`port` answers (`kind` tcp, or udp for a datagram
    "hi"), asked from inside `namespace`; or the name of the error (e.g. TimeoutError)."""
    argv = [sys.executable, "-c", _CLIENT, kind, address, str(port), str(timeout)]
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True, text=True, timeout=timeout + 20, check=True,
    )  # fmt: skip
    return done.stdout.strip()
