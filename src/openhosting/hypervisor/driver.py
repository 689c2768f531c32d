"""The hypervisor driver: what the platform asks of a host's VMs (after OpenStack Nova's
`virt/driver.py`).

Plain data in and out: a VM is named by its server's uuid, described by a `VmSpec`
(hypervisor/spec.py), and reported as `VmStatus` records and `VmEvent`s; no live object
(process, monitor connection) crosses the interface, so it can become the boundary between a
control plane and a host agent. Everything host-specific (run directories, the account QEMU
drops to, secret files, cgroups, TLS files, QMP, free VNC ports) is the driver's.

`qemu_driver.QemuDriver` runs real QEMU; `fake.FakeHypervisor` holds VMs in memory for fast
tests. `tests/hypervisor/test_driver_behaviour.py` holds both to the same rules.

Events (`VmEventKind`), in the order a VM lives them, go to the one handler given to `listen`:

- `PAUSED` (with the reason) and `RESUMED`: QEMU stopped or ran the vCPUs again;
- `POWERED_OFF`: the guest powered itself off; the VM is ended once the handler returns (at
  most `ENDING_TIMEOUT` s later): the last moment to read its counters;
- `EXITED` (with `how`: `SHUTDOWN` or `CRASH`): the VM is gone, whatever ended it, once and
  last. A start that fails sends nothing: it leaves no VM.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from openhosting.config import Config, ConfigError
from openhosting.hypervisor.spec import (
    DriveSecret,
    HostVmSettings,
    NbdSource,
    VmSpec,
    check_drive_name,
    check_uuid,
)

if TYPE_CHECKING:
    from openhosting.hypervisor.migration import MigrationTls


class VmEnd(StrEnum):
    """How a VM ended: a SHUTDOWN event came first (guest power-off, quit, SIGTERM), or not."""

    SHUTDOWN = "shutdown"
    CRASH = "crash"


class PauseReason(StrEnum):
    """Why a VM is paused, when the host knows: its storage is full, or another host I/O
    error. Any other reason (`VmStatus.reason`, a PAUSED event's) is QEMU's own run state
    (`paused` after a monitor's `stop`, `internal-error`, ...)."""

    NOSPACE = "nospace"
    IO_ERROR = "io-error"


class VmState(StrEnum):
    """What a VM does (`VmStatus.state`)."""

    RUNNING = "running"
    PAUSED = "paused"


class VmEventKind(StrEnum):
    """The kinds of `VmEvent`."""

    PAUSED = "paused"
    RESUMED = "resumed"
    POWERED_OFF = "powered_off"
    EXITED = "exited"


# How long the handler of POWERED_OFF may take before the VM is ended anyway.
ENDING_TIMEOUT = 5.0


@dataclass(frozen=True)
class BlockStats:
    """Cumulative I/O of one drive since its VM started."""

    read_bytes: int
    read_requests: int
    write_bytes: int
    write_requests: int


@dataclass(frozen=True)
class VmStatus:
    """A VM that exists: RUNNING, or PAUSED for `reason` (a `PauseReason`, QEMU's state)."""

    server: str
    state: VmState
    reason: str | None = None
    started: float = 0.0  # seconds since the epoch; 0 when not known (adopted, no record)


@dataclass(frozen=True)
class VmEvent:
    """Something that happened to the VM of `server` (see the module's docstring)."""

    server: str
    kind: VmEventKind
    reason: str | None = None  # PAUSED: why
    how: VmEnd | None = None  # EXITED


@dataclass(frozen=True)
class StartRequest:
    """What a VM is started with, besides a saved state to run on from (`start`)."""

    spec: VmSpec
    secrets: tuple[DriveSecret, ...] = ()
    vnc_password: str | None = field(default=None, repr=False)
    vnc_names: tuple[str, ...] = ()  # more names for the VNC TLS certificate
    cpu_mhz: int | None = None  # the vCPUs' quota; None: not held
    timeout: float = 30.0  # seconds until QEMU answers (or the saved state is in)


@dataclass(frozen=True)
class IncomingRequest:
    """A VM to receive by live migration (`prepare_incoming`): `start.spec` (with `incoming`)
    names its drives' files on the target host, made empty there, `drive_bytes` long each."""

    start: StartRequest
    drive_bytes: tuple[tuple[str, int], ...]  # (slot, size in bytes) of each disk to copy
    # When the VM started on its first host (`VmStatus.started`): a move is no new start.
    started: float = 0.0
    # (slot, bytes) of each encrypted (`luks`) disk to copy: its file's leading bytes up to
    # its payload (the LUKS header and key material, trailing zeros cut), written into the
    # new file before QEMU opens the container there with the drive's passphrase.
    drive_headers: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ExportRequest:
    """A drive of this host served over NBD to the VM of `server` on host `client`
    (`ExportingDriver.export_drive`): named by UUID and tier, as a start names a drive its
    agent holds (the agent finds its own file; no path crosses the wire)."""

    server: str
    drive: str
    tier: str
    client: str  # the host running the server: only its certificate may connect
    read_only: bool = False

    def __post_init__(self) -> None:
        check_drive_name(self.drive, self.tier)
        check_uuid(self.server, "a server's")  # a directory name there too


# A migration stream's address: a unix socket (`unix:/PATH`) or TCP (`tcp:HOST:PORT`), and
# nothing else QEMU would take (`exec:` runs a command).
_STREAM_ADDRESS = re.compile(r"unix:/[^,\s]+|tcp:[A-Za-z0-9.\-]+:[0-9]{1,5}")


def check_stream_address(address: str) -> str:
    """`address` if it is a `unix:/PATH` or `tcp:HOST:PORT` stream address, else ValueError."""
    if not _STREAM_ADDRESS.fullmatch(address):
        raise ValueError(f"not a unix: or tcp: stream address: {address[:120]!r}")
    return address


@dataclass(frozen=True)
class IncomingInfo:
    """Where a prepared target waits (`prepare_incoming`) for a source (`migrate_out`): the
    address of its migration stream and of its NBD server, and the export of each drive."""

    server: str
    migration_uri: str  # `unix:/run/.../mig.sock` or `tcp:HOST:PORT`
    nbd_address: str  # the NBD server's, in the same form
    exports: tuple[tuple[str, str], ...]  # (block node on the source, NBD export name)
    # Set when the target takes both streams over TLS only: the name its certificate must
    # bear (its host's name in the cluster CA's certificate).
    tls_hostname: str | None = None
    # Where each copied drive's file is on the target (slot, path): the server's drives live
    # there from the move on.
    drive_paths: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_stream_address(self.migration_uri)
        check_stream_address(self.nbd_address)


EventHandler = Callable[[VmEvent], Awaitable[None]]
# Moves a saved state through a pipe, in a worker thread of the host: a sink reads its
# descriptor to the end (and stores what it read), a source writes the state into it.
StateStream = Callable[[int], object]


def run_state_stream(stream: StateStream, fd: int) -> None:
    """Run `stream` (a sink or a source) on its end of a pipe, in a worker thread, and close
    that end after, even when it fails: the other end then sees the stream's end (or EPIPE)
    instead of blocking on a pipe nobody serves."""
    try:
        stream(fd)
    finally:
        os.close(fd)


class HypervisorDriver(Protocol):
    """The VMs of one host. Methods naming a VM the driver does not hold raise
    `HypervisorError`, as do those the hypervisor fails."""

    def listen(self, handler: EventHandler) -> None:
        """Send every `VmEvent` to `handler` from now on (one handler; awaited in turn)."""
        ...

    # -- the host --------------------------------------------------------------------

    def host_settings(self, *, vnc_listen: str, netns: str | None) -> HostVmSettings:
        """What this host puts into every VM's spec (accelerator, QEMU, hardening), with
        where VNC listens (the console service's choice, services/servers/vnc.py) and the network
        namespace (the network layer's)."""
        ...

    def run_dir(self, server: str) -> Path:
        """The directory the spec of `server` names for its VM's files."""
        ...

    def vnc_port_free(self, address: str, port: int) -> bool:
        """Whether TCP `address`:`port` is free on this host for a VM's VNC server (nothing
        else listens there). Which display a server gets is the console service's choice."""
        ...

    # -- life ------------------------------------------------------------------------

    async def start(self, request: StartRequest, restore: StateStream | None = None) -> VmStatus:
        """Start the VM of `request.spec` with its drives' passphrases, its VNC password (TLS
        credentials naming `vnc_names` too when the spec asks for TLS) and CPU quota. With
        `restore` (and `spec.incoming`) it runs on from a saved state instead of booting.
        Whole or not at all: on failure nothing of it is left and the error is raised."""
        ...

    async def adopt(self, server: str, *, started: float, timeout: float = 10.0) -> VmStatus | None:
        """Hold again the VM of `server` left running by a previous daemon; None if there is
        none. `HypervisorError` if it runs but cannot be controlled (see `stop_unheld`)."""
        ...

    def how_ended(self, server: str) -> VmEnd:
        """How the VM of `server`, not found by `adopt`, ended (SHUTDOWN or CRASH)."""
        ...

    async def unheld(self) -> list[str]:
        """Servers whose VM runs on this host but is held by no one here."""
        ...

    async def stop_unheld(self, server: str, timeout: float = 10.0) -> None:
        """Stop the VM of `server` that runs without being held (no event: none is held)."""
        ...

    async def stop(self, server: str, timeout: float = 10.0) -> None:
        """Power off now (kill if need be); returns once EXITED has been handled."""
        ...

    async def kill(self, server: str, timeout: float = 10.0) -> None:
        """End the VM with signals, for one whose monitor does not answer."""
        ...

    async def powerdown(self, server: str) -> None:
        """Ask the guest to power off (ACPI); it may take its time, or refuse."""
        ...

    async def reset(self, server: str) -> None: ...

    async def resume(self, server: str) -> None:
        """Run a paused VM again (a write held by a full disk is retried)."""
        ...

    async def save_state(self, server: str, sink: StateStream, timeout: float) -> None:
        """Pause the VM and stream its state into `sink`; it stays paused. If the state
        cannot be saved, the VM runs on and `HypervisorError` is raised."""
        ...

    async def detach_all(self) -> None:
        """Let go of every VM without stopping one (the daemon stops; they run on)."""
        ...

    def forget(self, server: str) -> None:
        """The server is destroyed: remove what the host keeps of it (run files)."""
        ...

    # -- while it runs ---------------------------------------------------------------

    def status(self, server: str) -> VmStatus | None:
        """The VM of `server` as the hypervisor last said (run state read on each of its
        stop and resume events); None if this driver holds none."""
        ...

    def held(self) -> list[str]:
        """The servers whose VM this driver holds."""
        ...

    async def held_on_host(self) -> list[str]:
        """The servers whose VM runs held on this driver's host, whoever asked for it: on an
        agent's host, all those its agent holds, whichever API node started them; on this
        host, `held`."""
        ...

    async def set_cpu(self, server: str, cpu_mhz: int) -> None:
        """Hold the vCPUs of the VM to `cpu_mhz`."""
        ...

    async def set_vnc_password(self, server: str, password: str | None) -> None:
        """Set the VNC password, or with None refuse every login from now on."""
        ...

    async def blockstats(self, server: str) -> Mapping[str, BlockStats]:
        """Each drive's I/O since the VM started, by slot."""
        ...

    def serial_log(self, server: str) -> bytes | None:
        """What the server's VM printed on its serial port, within the log's bound (its last
        run's, once ended); None if there is none."""
        ...


class MigratingDriver(HypervisorDriver, Protocol):
    """A driver that moves running VMs to another host's driver (see hypervisor/migration.py
    for the sequence and `migration.live_migrate` for the order of these calls)."""

    async def prepare_incoming(self, request: IncomingRequest) -> IncomingInfo:
        """Make the drives' empty files, start the VM paused waiting for a migration, its
        drives served writable over NBD. Whole or not at all. Not held (no event) until
        `finish_incoming`."""
        ...

    async def migrate_out(self, server: str, target: IncomingInfo, timeout: float) -> None:
        """Mirror every drive of `server` to `target`, then move its memory and devices there.
        On return the VM here is paused, its drives' copies complete; it stays held but
        sends no PAUSED event. On failure it runs on as before, and `HypervisorError`."""
        ...

    async def finish_incoming(self, server: str, timeout: float) -> VmStatus:
        """Once the source's `migrate_out` returned: stop serving the drives and run the VM
        here, held from now on."""
        ...

    async def abort_incoming(self, server: str) -> None:
        """Kill a VM `prepare_incoming` made (held or not) and remove its drives' files."""
        ...

    async def cancel_migrate_out(self, server: str) -> None:
        """After `migrate_out` returned but the target could not run the VM: run it here
        again (it takes its drives back)."""
        ...

    async def end_migrated(self, server: str, timeout: float = 10.0) -> None:
        """The VM runs on the target: end it here without an EXITED event (it did not end)
        and remove its run files; its drives' files stay, the caller's to remove."""
        ...


@runtime_checkable
class ExportingDriver(HypervisorDriver, Protocol):
    """A host's driver that also serves its drives to VMs of other hosts over NBD (an
    agent's: hypervisor/nbd_exports.py runs the exports, one qemu-storage-daemon each)."""

    async def export_drive(self, request: ExportRequest) -> NbdSource:
        """Serve the drive over NBD with TLS to `request.client`'s certificate only, for as
        long as the server's VM runs; where its QEMU connects. Whole or not at all."""
        ...

    async def end_exports(self, server: str) -> None:
        """End every export of this host for `server` (its VM ended or did not start)."""
        ...

    async def exports(self) -> list[str]:
        """The servers this host exports drives to (running exports, whoever made them)."""
        ...


def open_driver(config: Config, migration_tls: MigrationTls | None = None) -> HypervisorDriver:
    """The driver `hypervisor.driver` names: `qemu` (its live migrations over TLS with
    `migration_tls`), or `fake` (for tests)."""
    # Imported here: the interface's users need neither implementation loaded.
    if config.hypervisor.driver == "qemu":
        from openhosting.hypervisor.qemu_driver import QemuDriver

        return QemuDriver(
            config.hypervisor, config.run_path, config.state_path, migration_tls=migration_tls
        )
    if config.hypervisor.driver == "fake":
        from openhosting.hypervisor.fake import FakeHypervisor

        return FakeHypervisor(config.run_path)
    raise ConfigError(f"Invalid hypervisor.driver {config.hypervisor.driver!r}: use qemu or fake")
