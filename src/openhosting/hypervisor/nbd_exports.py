"""A host's drives served to the VMs of other hosts over NBD: one `qemu-storage-daemon` per
(server, drive), over TLS, for as long as the server's VM runs (docs/cluster.md, "Drives of
one host used by a server on another").

- **What is served**: the drive's file as it is on disk, a `file` node exported writable
  (read-only for a cdrom). An encrypted drive is its LUKS container: the QEMU of the server,
  on its own host, opens the LUKS layer with the passphrase, so the key never reaches this
  host's process and only ciphertext crosses the network.
- **Who may connect**: TLS only (`tls-creds-x509`, `endpoint=server`, `verify-peer=on`: a
  certificate of the cluster CA), and only the certificate of the host running the server
  (`authz-simple` with that host's distinguished name, as QEMU's TLS layer prints it), one
  connection at a time (`max-connections=1`: once the VM's QEMU holds it, nothing else on
  that host connects, not even another QEMU holding the same host certificate).
- **Where**: on `hypervisor.migration_address` (this host's cluster address), a free port of
  `hypervisor.migration_ports`.
- **Its life**: daemonized (not this process's child, so it outlives an agent's restart),
  its pidfile and what it serves in `<run_path>/nbd-exports/SERVER/DRIVE/`; found again by
  pidfile, trusted only while /proc/PID/cmdline names that pidfile, killed by that PID only.

`build_qsd_argv` is pure (the command line of one export); `DriveExports` runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openhosting import pidwait
from openhosting.hypervisor.argv import qemu_opts, tls_creds_object
from openhosting.hypervisor.driver import ExportRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import DH_PARAMS, FFDHE2048_PEM, MigrationTls
from openhosting.hypervisor.qemu_driver import port_is_free
from openhosting.hypervisor.spec import NbdSource
from openhosting.pem_files import write_whole

log = logging.getLogger("openhosting.hypervisor.nbd")

QSD_BINARY = "qemu-storage-daemon"
EXPORTS_DIRECTORY = "nbd-exports"
PIDFILE = "qsd.pid"
SOURCE_FILE = "source.json"
# Seconds for qemu-storage-daemon to set up (its foreground part exits once it listens).
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
# Ports tried in turn when the one probed free is taken before the daemon binds it.
BIND_ATTEMPTS = 3


@dataclass(frozen=True)
class QsdExport:
    """One export as its daemon runs it: `path` served as `source` to the certificate whose
    subject is `client_dn`, with the TLS files of `tls_dir` (server end)."""

    path: Path
    source: NbdSource
    client_dn: str
    tls_dir: Path
    pidfile: Path
    read_only: bool = False
    binary: str = QSD_BINARY


def build_qsd_argv(export: QsdExport) -> list[str]:
    """The command line of `export`'s qemu-storage-daemon, daemonized. Same export, same list."""
    on_off = "off" if export.read_only else "on"
    return [
        export.binary,
        "--object",
        tls_creds_object("tls", export.tls_dir, "server", verify_peer=True),
        "--object",
        qemu_opts(("id", "authz"), ("identity", export.client_dn), head="authz-simple"),
        "--blockdev",
        qemu_opts(
            ("driver", "file"),
            ("node-name", "file"),
            ("filename", export.path),
            ("read-only", "on" if export.read_only else "off"),
            ("discard", "unmap"),
        ),
        "--nbd-server",
        qemu_opts(
            ("addr.type", "inet"),
            ("addr.host", export.source.host),
            ("addr.port", export.source.port),
            ("tls-creds", "tls"),
            ("tls-authz", "authz"),
            ("max-connections", 1),
        ),
        "--export",
        qemu_opts(
            ("id", "export"),
            ("node-name", "file"),
            ("name", export.source.export),
            ("writable", on_off),
            head="nbd",
        ),
        "--pidfile",
        str(export.pidfile),
        "--daemonize",
    ]


def export_pid(pidfile: Path) -> int | None:
    """The pid of the export daemon of `pidfile`, if it runs: a pid is trusted only while its
    command line names that pidfile (pids are reused)."""
    try:
        text = pidfile.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text.isdigit() or pidwait.exited(pid := int(text)):
        return None
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    marker = str(pidfile).encode()
    is_ours = any(a == b"--pidfile" and b == marker for a, b in itertools.pairwise(words))
    return pid if is_ours else None


async def kill_export(pidfile: Path, timeout: float = STOP_TIMEOUT) -> None:
    """End the export daemon of `pidfile` by its pid: SIGTERM, then SIGKILL."""
    if (pid := export_pid(pidfile)) is None:
        return
    pidfd = pidwait.open_pidfd(pid)
    try:
        if export_pid(pidfile) != pid:  # checked with the pidfd open: the same process
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signum)
                else:
                    os.kill(pid, signum)
            exited = (
                await pidwait.wait_pidfd(pidfd, pid, timeout)
                if pidfd is not None
                else await pidwait.poll_exit(pid, timeout)
            )
            if exited:
                return
        raise HypervisorError(f"qemu-storage-daemon {pid} survived SIGKILL for {timeout:g} s")
    finally:
        if pidfd is not None:
            os.close(pidfd)


class DriveExports:
    """The NBD exports of this host's drives (an agent's), under `run_path`/nbd-exports.

    `tls` is this host's cluster certificate laid out for QEMU (the agent's migration TLS),
    `address` its cluster address (`hypervisor.migration_address`), `ports` where exports
    may listen. `client_dn` gives a host's certificate subject (agent/pki.py)."""

    def __init__(
        self,
        run_path: Path,
        tls: MigrationTls,
        address: str,
        ports: range,
        client_dn: Callable[[str], str],
        binary: str = QSD_BINARY,
    ) -> None:
        self.directory = run_path / EXPORTS_DIRECTORY
        self._tls = tls
        self._address = address
        self._ports = ports
        self._client_dn = client_dn
        self._binary = binary
        self._lock = asyncio.Lock()  # one port picked and bound at a time

    async def export(self, request: ExportRequest, path: Path) -> NbdSource:
        """Serve `path`, the file of `request.drive`, to `request.client`'s VM of
        `request.server`; an export of the same drive for that server made before is
        ended first. `HypervisorError` if it cannot be served."""
        if not self._address:
            raise HypervisorError(
                f"host {self._tls.host} has no hypervisor.migration_address: its drives"
                " cannot be served to other hosts"
            )
        if not path.is_file():
            raise HypervisorError(f"drive {request.drive} has no file on host {self._tls.host}")
        try:
            client_dn = self._client_dn(request.client)
        except ValueError as error:
            raise HypervisorError(str(error)) from None
        home = self.directory / request.server / request.drive
        await kill_export(home / PIDFILE)
        await asyncio.to_thread(self._prepare, home)
        async with self._lock:
            failures: list[str] = []
            for port in self._free_ports():
                source = NbdSource(self._address, port, request.drive, self._tls.host)
                export = QsdExport(
                    path, source, client_dn, self._tls.directory, home / PIDFILE,
                    request.read_only, self._binary,
                )  # fmt: skip
                try:
                    await self._spawn(export)
                except HypervisorError as error:
                    failures.append(str(error))
                    if "Address already in use" not in str(error):
                        break
                    continue
                (home / SOURCE_FILE).write_text(json.dumps(dataclasses.asdict(source)))
                log.info(
                    "event=nbd_export_started server=%s drive=%s client=%s port=%s",
                    request.server, request.drive, request.client, port,
                )  # fmt: skip
                return source
        shutil.rmtree(home, ignore_errors=True)
        raise HypervisorError(
            f"drive {request.drive} cannot be served over NBD from host {self._tls.host}: "
            + ("; ".join(failures) or f"no free port in {self._ports.start}-{self._ports.stop - 1}")
        )

    async def end(self, server: str) -> None:
        """End every export for `server` (by their pids) and remove their files."""
        home = self.directory / server
        for drive in sorted(home.iterdir()) if home.is_dir() else []:
            await kill_export(drive / PIDFILE)
            log.info("event=nbd_export_ended server=%s drive=%s", server, drive.name)
        shutil.rmtree(home, ignore_errors=True)

    def servers(self) -> list[str]:
        """The servers with an export running here."""
        found = []
        for home in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            drives = sorted(home.iterdir()) if home.is_dir() else []
            if any(export_pid(drive / PIDFILE) is not None for drive in drives):
                found.append(home.name)
        return found

    def _prepare(self, home: Path) -> None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (home / PIDFILE).unlink(missing_ok=True)
        dh_params = self._tls.directory / DH_PARAMS
        if not dh_params.exists():
            # A known group: without it the daemon makes new DH parameters at each start.
            write_whole(dh_params, FFDHE2048_PEM, 0o600)

    def _free_ports(self) -> list[int]:
        free = (port for port in self._ports if port_is_free(self._address, port))
        return list(itertools.islice(free, BIND_ATTEMPTS))

    async def _spawn(self, export: QsdExport) -> None:
        process = await asyncio.create_subprocess_exec(
            *build_qsd_argv(export),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # not the agent's: it outlives the agent's restart
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            await kill_export(export.pidfile)
            raise HypervisorError(
                f"qemu-storage-daemon did not start within {START_TIMEOUT:g} s"
            ) from None
        if process.returncode != 0:
            message = stderr.decode(errors="replace").strip().replace("\n", "; ")
            raise HypervisorError(message or f"qemu-storage-daemon exit {process.returncode}")
        if export_pid(export.pidfile) is None:
            raise HypervisorError("qemu-storage-daemon started but its pidfile names no export")
