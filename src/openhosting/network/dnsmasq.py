"""One dnsmasq per bridge, serving DHCP only, with fixed MAC -> IP entries.

dnsmasq runs daemonized (it survives a daemon restart and is found again by its pidfile) and
answers only the hosts it has an entry for (`static` range): one file per NIC in its
`--dhcp-hostsdir`. dnsmasq reads new files by itself; a removed entry needs a SIGHUP.

dnsmasq will not hand an address to a MAC while its lease database says another MAC holds it,
so when an address changes hands (a temporary address or an IP resource used by another
server) the stale leases are dropped from the lease file and dnsmasq is restarted. Renewals of
the leases it keeps go on unharmed: the lease file and the entries are the same after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from openhosting.named_files import NamedFile
from openhosting.network.errors import NetworkError
from openhosting.network.links import netns_exec_argv, run_command
from openhosting.network.pool import AddressPool

log = logging.getLogger("openhosting.network")

DNSMASQ_BINARY = "dnsmasq"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_POLL = 0.05


@dataclass(frozen=True)
class DhcpSpec:
    """A DHCP server for the pool on `bridge`, keeping its files in `directory`."""

    bridge: str
    directory: Path
    pool: AddressPool
    lease_seconds: int = 3600
    namespace: str = ""
    binary: str = DNSMASQ_BINARY

    pidfile = NamedFile("dnsmasq.pid")
    hosts_dir = NamedFile("hosts")  # one entry file per NIC (`--dhcp-hostsdir`)
    lease_file = NamedFile("leases")
    log_file = NamedFile("dnsmasq.log")


def build_dnsmasq_argv(spec: DhcpSpec) -> list[str]:
    """The command line that starts the DHCP server of `spec` daemonized. Pure."""
    pool = spec.pool
    options = [
        "--conf-file=/dev/null",  # never a system-wide configuration
        "--port=0",  # DHCP only: no DNS server
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--interface={spec.bridge}",
        "--except-interface=lo",
        f"--pid-file={spec.pidfile}",
        f"--dhcp-leasefile={spec.lease_file}",
        f"--log-facility={spec.log_file}",
        "--log-dhcp",
        # Only hosts with an entry get an address: `nic:0:dhcp` unset means none offered.
        f"--dhcp-range={pool.subnet.network_address},static,{pool.netmask},{spec.lease_seconds}",
        f"--dhcp-hostsdir={spec.hosts_dir}",
        # Authoritative for its own guests (a lease it lost is answered at once, not left
        # to time out) and deaf to everyone else's: the public bridge is the provider's L2,
        # where every host's dnsmasq hears every guest, and an authoritative one NAKs a
        # request naming another server ("wrong server-ID"), which a guest may hear before
        # its own host's ACK.
        "--dhcp-authoritative",
        "--dhcp-ignore=tag:!known",
        f"--dhcp-option=option:router,{pool.gateway}",
    ]
    if pool.nameservers:
        servers = ",".join(str(address) for address in pool.nameservers)
        options.append(f"--dhcp-option=option:dns-server,{servers}")
    return netns_exec_argv(spec.namespace, [spec.binary, *options])


def host_entry(mac: str, address: str) -> str:
    """One `--dhcp-hostsdir` file's text: `mac` always gets `address`."""
    return f"{mac},{address}\n"


def parse_host_entry(text: str) -> tuple[str, str] | None:
    mac, _, address = text.strip().partition(",")
    return (mac, address) if mac and address else None


def stale_leases(lease_text: str, address: str, mac: str) -> list[str]:
    """Lines of a dnsmasq lease file that hold `address` for a MAC other than `mac`."""
    stale = []
    for line in lease_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == address and fields[1].lower() != mac:
            stale.append(line)
    return stale


class DhcpServer:
    """The dnsmasq of one bridge: started, found again, told about entries, stopped."""

    def __init__(self, spec: DhcpSpec) -> None:
        self.spec = spec

    # -- the process ---------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this bridge's running dnsmasq, or None (a stale pidfile is no pid)."""
        try:
            text = self.spec.pidfile.read_text().strip()
            cmdline = Path(f"/proc/{int(text)}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # Pids are reused: only a dnsmasq with our pidfile on its command line is ours.
        marker = f"--pid-file={self.spec.pidfile}".encode()
        return int(text) if marker in cmdline.split(b"\0") else None

    async def ensure_running(self) -> int:
        """Start dnsmasq unless it runs; its pid."""
        if (pid := self.pid()) is not None:
            return pid
        self.spec.directory.mkdir(parents=True, exist_ok=True)
        # dnsmasq drops to an unprivileged user and must still read its entries.
        self.spec.directory.chmod(0o755)
        self.spec.hosts_dir.mkdir(mode=0o755, exist_ok=True)
        self.spec.pidfile.unlink(missing_ok=True)
        # The launcher exits once the daemon is ready (or with dnsmasq's error).
        await run_command(build_dnsmasq_argv(self.spec), timeout=START_TIMEOUT)
        pid = self.pid()
        if pid is None:
            raise NetworkError(f"dnsmasq for {self.spec.bridge} started but left no pid")
        log.info("event=dhcp_started bridge=%s pid=%s", self.spec.bridge, pid)
        return pid

    async def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL) if it runs; its entries and leases stay."""
        pid = self.pid()
        if pid is not None:
            for signum in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
                if await _wait_gone(pid, STOP_TIMEOUT):
                    break
            else:
                raise NetworkError(f"dnsmasq (pid {pid}) of {self.spec.bridge} does not stop")
            log.info("event=dhcp_stopped bridge=%s pid=%s", self.spec.bridge, pid)
        self.spec.pidfile.unlink(missing_ok=True)

    def reload(self) -> None:
        """Make dnsmasq read its entries again (it notices new files, not removed ones)."""
        if (pid := self.pid()) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    # -- entries -------------------------------------------------------------------------

    def _entry_path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise NetworkError(f"not a usable entry name: {name!r}")
        return self.spec.hosts_dir / name

    def entries(self) -> dict[str, tuple[str, str]]:
        """The entries by name: (mac, address)."""
        found: dict[str, tuple[str, str]] = {}
        if not self.spec.hosts_dir.is_dir():
            return found
        for path in self.spec.hosts_dir.iterdir():
            if path.name.startswith("."):
                continue  # a file being written
            with contextlib.suppress(OSError):
                if (entry := parse_host_entry(path.read_text())) is not None:
                    found[path.name] = entry
        return found

    async def add_entry(self, name: str, mac: str, address: str) -> None:
        """Serve `address` to `mac` from now on, taking it from whoever had it before."""
        path = self._entry_path(name)
        self.spec.hosts_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Written beside, then renamed: dnsmasq must never read half an entry.
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(host_entry(mac, address))
        temporary.chmod(0o644)
        os.replace(temporary, path)
        if self._stale_leases(address, mac):
            # dnsmasq keeps its leases in memory too: stopped, the file edited, started again.
            await self.stop()
            self._drop_stale_leases(address, mac)
        await self.ensure_running()
        self.reload()

    def remove_entry(self, name: str) -> None:
        """Stop serving the entry `name` (if there is one)."""
        path = self._entry_path(name)
        if path.exists():
            path.unlink()
            self.reload()

    def _stale_leases(self, address: str, mac: str) -> set[str]:
        try:
            return set(stale_leases(self.spec.lease_file.read_text(), address, mac))
        except FileNotFoundError:
            return set()

    def _drop_stale_leases(self, address: str, mac: str) -> None:
        """Remove the lease file's leases of `address` held by other MACs."""
        stale = self._stale_leases(address, mac)
        if not stale:
            return
        text = self.spec.lease_file.read_text()
        kept = [line for line in text.splitlines() if line not in stale]
        temporary = self.spec.lease_file.with_name(".leases.tmp")
        temporary.write_text("".join(f"{line}\n" for line in kept))
        os.replace(temporary, self.spec.lease_file)


async def _wait_gone(pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        await asyncio.sleep(_POLL)
    return False
