"""passt, the user-mode network of one NIC: start it, find it again, stop it.

passt (Debian's `passt`) turns the guest's frames into ordinary sockets of the host, with
DHCP and a DNS forwarder of its own; QEMU reaches it over a unix socket (`-netdev stream`).
Unlike QEMU's built-in slirp it can leave the gateway address alone (`--no-map-gw`), so the
guest's 10.0.2.2 is not the host's loopback. One passt serves one NIC and, like QEMU, runs
daemonized with a pidfile: it outlives a daemon restart with its VM and is found again by its
pidfile, trusted only while /proc/PID/cmdline names its own socket (pids are reused). With
`--one-off` it ends by itself when its VM does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from openhosting.network.errors import NetworkError
from openhosting.network.netdevs import MAX_SOCKET_PATH
from openhosting.pidwait import wait_exit

log = logging.getLogger(__name__)

PASST_BINARY = "passt"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class PasstFiles:
    """The files of the passt of NIC `index` of `server`, in the passt directory."""

    directory: Path
    server: str
    index: int

    @property
    def stem(self) -> str:
        return f"{self.server}-{self.index}"

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.stem}.sock"

    @property
    def pidfile(self) -> Path:
        return self.directory / f"{self.stem}.pid"


@dataclass(frozen=True)
class GuestAddressing:
    """What passt's DHCP hands the guest: its address in `network` behind `gateway`, and the
    name server address the guest asks (passt forwards it to the host's resolver)."""

    address: IPv4Address
    network: IPv4Network
    gateway: IPv4Address
    dns: IPv4Address
    dhcp: bool = True  # False: passt's DHCP server stays silent (the guest sets its own)


def build_passt_argv(
    files: PasstFiles, addressing: GuestAddressing, run_as: str | None, binary: str = PASST_BINARY
) -> list[str]:
    """The command line of one NIC's passt (pure)."""
    if len(str(files.socket).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"passt directory path too long for a unix socket: {files.socket}")
    argv = [
        binary,
        "--socket", str(files.socket),
        "--pid", str(files.pidfile),
        # No log file: passt opens it before dropping privileges but without the capability
        # to write into its own unprivileged directory. Start-up errors come on stderr.
        "--quiet",
        # The gateway is just an address the guest cannot reach, never the host's loopback.
        "--no-map-gw",
        # IPv4 like the rest of the platform; ends when its one client, the VM, goes away.
        "--ipv4-only",
        "--one-off",
        "--address", str(addressing.address),
        "--netmask", str(addressing.network.prefixlen),
        "--gateway", str(addressing.gateway),
        "--dns", str(addressing.dns),
        "--dns-forward", str(addressing.dns),
        "--no-dhcp-search",
        # Nothing inbound: no port of the host leads to the guest (passt's default, said
        # here because docs/networking.md promises it: `nic:N:block` has nothing to add).
        "--tcp-ports", "none",
        "--udp-ports", "none",
    ]  # fmt: skip
    if not addressing.dhcp:
        argv.append("--no-dhcp")
    if run_as:
        argv += ["--runas", run_as]
    return argv


def adopt(files: PasstFiles) -> int | None:
    """The pid of this NIC's running passt according to its pidfile, or None."""
    try:
        text = files.pidfile.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(text) if text.isdigit() and _is_passt_of(int(text), files) else None


def _is_passt_of(pid: int, files: PasstFiles) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    socket = str(files.socket).encode()
    return any(a == b"--socket" and b == socket for a, b in itertools.pairwise(cmdline))


def in_cgroup(argv: list[str], cgroup_procs: Path) -> list[str]:
    """`argv` run in the cgroup of `cgroup_procs` from its first instruction on, so every
    socket it opens belongs there (pure). The shell joins, then becomes the program."""
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup_procs), *argv]


async def start(
    files: PasstFiles,
    addressing: GuestAddressing,
    run_as: str | None,
    cgroup_procs: Path | None = None,
) -> int:
    """Start the NIC's passt and return its pid once its socket listens (passt daemonizes
    after binding it), in the cgroup of `cgroup_procs` if given. A passt already serving this
    NIC is stopped first."""
    argv = build_passt_argv(files, addressing, run_as)
    if cgroup_procs is not None:
        argv = in_cgroup(argv, cgroup_procs)
    await stop(files)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        raise NetworkError(f"cannot run {PASST_BINARY} (Debian package passt): {error}") from None
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        await stop(files)
        raise NetworkError(f"passt did not start within {START_TIMEOUT:g} s") from None
    pid = adopt(files)
    if process.returncode != 0 or pid is None or not files.socket.exists():
        await stop(files)
        message = stderr.decode(errors="replace").strip().replace("\n", "; ")
        raise NetworkError(f"passt failed to start: {message or f'exit {process.returncode}'}")
    log.debug("passt started server=%s nic=%d pid=%d", files.server, files.index, pid)
    return pid


async def stop(files: PasstFiles, timeout: float = 5.0) -> None:
    """Stop the NIC's passt if it runs, and remove its socket and pidfile; idempotent."""
    if (pid := adopt(files)) is not None:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                break
            if await wait_exit(pid, timeout):
                break
        else:
            raise NetworkError(f"passt {pid} survived SIGKILL for {timeout:g} s")
    for path in (files.socket, files.pidfile):
        path.unlink(missing_ok=True)


def running_files(directory: Path) -> list[PasstFiles]:
    """The NICs that have a passt pidfile in `directory` (running or left behind)."""
    found = []
    for pidfile in sorted(directory.glob("*-*.pid")):
        server, _, index = pidfile.stem.rpartition("-")
        if index.isdigit():
            found.append(PasstFiles(directory, server, int(index)))
    return found
