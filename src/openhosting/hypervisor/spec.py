"""What a VM is made of: `VmSpec` and its parts (disks, NICs and their network backends, VNC).

Plain frozen dataclasses holding plain data (strings, numbers, paths, tuples), checked when
made: a spec is what crosses the hypervisor driver's interface (hypervisor/driver.py), so it
must be serialisable and mean the same on any host. `argv.py` turns one into QEMU's command
line; the network layer makes the netdevs its NICs use.

- `-name guest=<server uuid>`: `process.adopt` checks /proc/PID/cmdline for the UUID.
- One run directory per server holding the pidfile, the QMP socket, the serial socket, the
  console socket and the serial log (`RunPaths`).
- Device ids come from slots (`ide:0:1` -> `ide-0-1`, block node `drive-ide-0-1`), so
  `monitor.query_blockstats` can map QEMU's answers back to slots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from openhosting.named_files import NamedFile

# The network backends of NICs are the network layer's (which knows nothing of QEMU).
from openhosting.network.netdevs import (
    MAX_SOCKET_PATH,
    Netdev,
    StreamNetdev,
    TapNetdev,
    UserNetdev,
)

__all__ = [
    "MAX_SOCKET_PATH",
    "QEMU_BINARY",
    "DiskSpec",
    "DriveSecret",
    "HostVmSettings",
    "NbdSource",
    "Netdev",
    "NicSpec",
    "RunPaths",
    "StreamNetdev",
    "TapNetdev",
    "UserNetdev",
    "VmSpec",
    "VncSpec",
    "slot_for_device_id",
]

QEMU_BINARY = "qemu-system-x86_64"
ACCELERATORS = ("kvm", "tcg")
NIC_DEVICES = {"e1000": "e1000", "rtl8139": "rtl8139", "virtio": "virtio-net-pci"}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# An API device slot: `ide:B:U`, `scsi:0:I` or `block:I`.
SLOT_PATTERN = re.compile(r"ide:([01]):([01])|scsi:0:([0-7])|block:([0-7])")
_TIER = re.compile(r"[a-z][a-z0-9_-]{0,15}")
_GENERATION = re.compile(r"[0-9a-f]{1,32}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_NETNS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# A host's name (lowercase DNS name, agent/pki.py) or an IPv4 address: where an NBD export
# listens, and the name its certificate must bear.
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class RunPaths:
    """The files of one VM in its run directory."""

    directory: Path

    pidfile = NamedFile("qemu.pid")
    qmp_socket = NamedFile("qmp.sock")
    serial_socket = NamedFile("serial.sock")
    # The daemon's socket lending the serial console to one client at a time.
    console_socket = NamedFile("console.sock")
    # The newest file of the serial log; older output in `serial.log.1`, …
    serial_log = NamedFile("serial.log")
    # Where the spawner records the command line, for operators and diffs.
    argv_file = NamedFile("qemu.argv")


def secret_id_of(node: str) -> str:
    """The id of the `-object secret` of the drive whose device node is `node`
    (`drive-ide-0-0` -> `secret-ide-0-0`): what a running QEMU's luks node was opened with."""
    return f"secret-{node.removeprefix('drive-')}"


def check_uuid(text: str, what: str) -> None:
    """ValueError unless `text` is a lowercase UUID (`what`'s: a drive's, a server's)."""
    if not _UUID.fullmatch(text):
        raise ValueError(f"not {what} UUID: {text[:80]!r}")


def check_drive_name(drive: str, tier: str, *, blank: bool = False) -> None:
    """ValueError unless `drive` is a UUID and `tier` a tier's name (or, with `blank`, empty):
    they become a file name on the host holding the drive."""
    if drive or not blank:
        check_uuid(drive, "a drive's")
    if (tier or not blank) and not _TIER.fullmatch(tier):
        raise ValueError(f"not a tier's name: {tier[:80]!r}")


@dataclass(frozen=True)
class NbdSource:
    """A drive whose bytes another host serves over NBD (hypervisor/nbd_exports.py): its
    export's address (`host`:`port`, that host's cluster address), its name, and the host
    name its TLS certificate must bear."""

    host: str
    port: int
    export: str  # the drive's UUID
    tls_hostname: str

    def __post_init__(self) -> None:
        for name in (self.host, self.tls_hostname):
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(f"not a host name or IPv4 address: {name[:80]!r}")
        if not 0 < self.port < 1 << 16:
            raise ValueError(f"not a TCP port: {self.port}")
        if not _UUID.fullmatch(self.export):
            raise ValueError(f"not a drive's UUID: {self.export[:80]!r}")


@dataclass(frozen=True)
class DiskSpec:
    """A drive file attached in an API slot. `luks` drives need the file of their passphrase."""

    slot: str
    path: Path
    media: str = "disk"  # "disk" | "cdrom"; a cdrom is attached read-only
    format: str = "raw"  # "raw" | "luks"; always explicit, never probed
    secret_file: Path | None = None
    # `claim:type shared`: other VMs may have the drive open for writing too. QEMU's image
    # locking refuses a second writer unless the device lets it share (share-rw).
    shared: bool = False
    # The drive's UUID and tier when a host agent holds its bytes: that agent opens its own
    # file of them in place of `path` (the control plane's name for it).
    drive: str = ""
    tier: str = ""
    # Another host's export of the drive (a drive of another host than the VM's): QEMU
    # reads and writes it over NBD with TLS instead of opening `path`.
    nbd: NbdSource | None = None
    # The generation of standard drive `drive` (no tier) whose copy in the image cache of
    # the agent's host the VM opens read-only, in place of `path` (agent/image_cache.py).
    cache: str = ""

    def __post_init__(self) -> None:
        if self.nbd is not None and self.drive:
            raise ValueError("a drive over NBD is no file of this host's agent")
        check_drive_name(self.drive, self.tier, blank=True)
        if self.cache:
            if not _GENERATION.fullmatch(self.cache) or not self.drive or self.tier:
                raise ValueError(f"not a cached standard drive: {self.cache[:80]!r}")
            if self.media != "cdrom":
                raise ValueError("a cached standard drive is attached as a cdrom")
        if not SLOT_PATTERN.fullmatch(self.slot):
            raise ValueError(f"not a device slot: {self.slot!r}")
        if self.media not in ("disk", "cdrom"):
            raise ValueError(f"media must be disk or cdrom, not {self.media!r}")
        if self.format not in ("raw", "luks"):
            raise ValueError(f"format must be raw or luks, not {self.format!r}")
        if (self.format == "luks") != (self.secret_file is not None):
            raise ValueError("a secret file is needed for luks drives, and only for them")

    @property
    def device_id(self) -> str:
        """The QEMU device id: the slot with dashes (`ide:0:1` -> `ide-0-1`)."""
        return self.slot.replace(":", "-")

    @property
    def node_name(self) -> str:
        """The block node the device is attached to (the format or luks layer)."""
        return f"drive-{self.device_id}"

    @property
    def file_node(self) -> str:
        """The `file` (protocol) node under `node_name`: the bytes as stored, a LUKS
        drive's header and ciphertext."""
        return f"file-{self.device_id}"

    @property
    def secret_id(self) -> str:
        """The id of the `-object secret` holding this drive's passphrase."""
        return secret_id_of(self.node_name)


def slot_for_device_id(device_id: str) -> str | None:
    """The slot whose `DiskSpec.device_id` is `device_id` (`ide-0-1` -> `ide:0:1`), if any."""
    slot = device_id.replace("-", ":")
    return slot if SLOT_PATTERN.fullmatch(slot) else None


@dataclass(frozen=True)
class NicSpec:
    """A network card: API NIC index, model (`e1000`, `rtl8139`, `virtio`) and MAC."""

    index: int
    model: str
    mac: str
    backend: Netdev = field(default_factory=UserNetdev)

    def __post_init__(self) -> None:
        if self.model not in NIC_DEVICES:
            raise ValueError(f"unknown NIC model {self.model!r}")
        if not _MAC.fullmatch(self.mac):
            raise ValueError(f"not a lowercase MAC address: {self.mac!r}")


@dataclass(frozen=True)
class VncSpec:
    """A VNC server on `address`, display `display` (port: vnc/ports.py); logins fail until a
    password is set by QMP."""

    address: str
    display: int
    tls_dir: Path | None = None  # a directory with ca-cert.pem, server-cert.pem, server-key.pem


@dataclass(frozen=True)
class VmSpec:
    """Everything QEMU needs to run one server. `boot` lists slots, first boots first."""

    uuid: str
    smp: int
    mem_mb: int
    run_dir: Path
    accelerator: str = "tcg"
    disks: tuple[DiskSpec, ...] = ()
    boot: tuple[str, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    vnc: VncSpec | None = None
    qemu_binary: str = QEMU_BINARY
    # The network namespace QEMU runs in (bridge mode with a namespace): its taps live there.
    netns: str | None = None
    # Hardening: a seccomp filter, and an unprivileged user QEMU switches to once it has
    # opened its files (None: stay as started).
    sandbox: bool = True
    run_as: str | None = None
    # Start paused, waiting for a saved state to be fed in (`migrate-incoming`), not booting.
    incoming: bool = False
    # The host's cluster certificate under QEMU's names (migration.write_qemu_tls_dir): the
    # client credentials of its disks over NBD. Set by the host's driver, which knows it.
    nbd_tls_dir: Path | None = None

    def __post_init__(self) -> None:
        if not _UUID.fullmatch(self.uuid):
            raise ValueError(f"not a lowercase UUID: {self.uuid!r}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be kvm or tcg, not {self.accelerator!r}")
        slots = [disk.slot for disk in self.disks]
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot is used twice in {slots}")
        if unknown := set(self.boot) - set(slots):
            raise ValueError(f"boot names slots without a disk: {sorted(unknown)}")
        if len({nic.index for nic in self.nics}) != len(self.nics):
            raise ValueError("a NIC index is used twice")
        if self.netns is not None and not _NETNS.fullmatch(self.netns):
            raise ValueError(f"not a network namespace name: {self.netns!r}")
        if self.nbd_tls_dir is not None and not any(disk.nbd for disk in self.disks):
            raise ValueError("NBD TLS credentials without a disk over NBD")

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)


@dataclass(frozen=True)
class HostVmSettings:
    """What this host puts into every VM, whatever the server."""

    accelerator: str  # `kvm` or `tcg`, already chosen
    vnc_listen: str  # the address VNC servers listen on
    vnc_tls_dir: Path  # the platform's VNC TLS credentials, for servers with `vnc:tls on`
    qemu_binary: str = QEMU_BINARY
    sandbox: bool = True
    run_as: str | None = None  # the user QEMU drops to
    netns: str | None = None  # the network namespace QEMU runs in


@dataclass(frozen=True)
class DriveSecret:
    """The passphrase of an encrypted drive and the file QEMU reads it from."""

    path: Path
    passphrase: bytes = field(repr=False)  # never in logs or tracebacks
