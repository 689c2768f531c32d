"""What a VM is made of (`VmSpec`) and the QEMU command line that builds it.

Pure: `build_qemu_argv` is a function of its `VmSpec` only, with a fixed order (machine,
run-dir plumbing, then disks and NICs sorted by slot/index), so the argv can be stored in the
run directory, diffed and tested as text. Nothing here knows about users, the API or files
beyond their paths. Choosing the accelerator probes the host, through injectable paths.

Conventions the rest of the driver relies on:

- `-name guest=<server uuid>`: `process.adopt` checks /proc/PID/cmdline for the UUID.
- One run directory per server holding the pidfile, the QMP socket, the serial socket, the
  console socket and the serial log (`RunPaths`). The serial port is a unix socket server
  whose one client is the daemon (`serial_relay`): it writes the log with a bound and offers
  the console on its own socket. QEMU writes no log file itself, which could grow unbounded.
- Device ids come from slots (`ide:0:1` -> `ide-0-1`, block node `drive-ide-0-1`), so
  `monitor.query_blockstats` can map QEMU's answers back to slots.
- Secrets for encrypted drives are passed as files (`-object secret,file=`), never inline.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from openhosting.model.server import slot_sort_key

QEMU_BINARY = "qemu-system-x86_64"
ACCELERATORS = ("kvm", "tcg")
NIC_DEVICES = {"e1000": "e1000", "rtl8139": "rtl8139", "virtio": "virtio-net-pci"}
# Unix socket paths are limited to 108 bytes including the terminating NUL (sun_path).
MAX_SOCKET_PATH = 107

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SLOT = re.compile(r"ide:([01]):([01])|scsi:0:([0-7])|block:([0-7])")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NETNS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class RunPaths:
    """The files of one VM in its run directory."""

    directory: Path

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.directory / "serial.sock"

    @property
    def console_socket(self) -> Path:
        """The daemon's socket lending the serial console to one client at a time."""
        return self.directory / "console.sock"

    @property
    def serial_log(self) -> Path:
        """The newest file of the serial log; older output in `serial.log.1`, …"""
        return self.directory / "serial.log"

    @property
    def argv_file(self) -> Path:
        """Where the spawner records the command line, for operators and diffs."""
        return self.directory / "qemu.argv"


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

    def __post_init__(self) -> None:
        if not _SLOT.fullmatch(self.slot):
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
    def secret_id(self) -> str:
        """The id of the `-object secret` holding this drive's passphrase."""
        return f"secret-{self.device_id}"


def slot_for_device_id(device_id: str) -> str | None:
    """The slot whose `DiskSpec.device_id` is `device_id` (`ide-0-1` -> `ide:0:1`), if any."""
    slot = device_id.replace("-", ":")
    return slot if _SLOT.fullmatch(slot) else None


@dataclass(frozen=True)
class UserNetdev:
    """QEMU user-mode networking: no host set-up; the guest gets 10.0.2.15 from QEMU, or
    `dhcp_start` in network `net` (CIDR) behind `host` with name server `dns` when given."""

    net: str | None = None
    host: str | None = None
    dhcp_start: str | None = None
    dns: str | None = None


@dataclass(frozen=True)
class TapNetdev:
    """An existing tap device (bridge mode); the network layer creates and enslaves it."""

    ifname: str

    def __post_init__(self) -> None:
        if not _IFNAME.fullmatch(self.ifname):
            raise ValueError(f"not an interface name: {self.ifname!r}")


@dataclass(frozen=True)
class StreamNetdev:
    """A user-mode network helper (passt) listening on the unix socket `socket`: QEMU sends
    the guest's frames there and the helper does the NAT and DHCP."""

    socket: Path

    def __post_init__(self) -> None:
        if len(str(self.socket).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")


Netdev = UserNetdev | TapNetdev | StreamNetdev


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


# VNC display N listens on this port + N (QEMU's rule); bridge mode also shows a server's VNC
# on its own address at this very port.
VNC_BASE_PORT = 5900


@dataclass(frozen=True)
class VncSpec:
    """A VNC server on `address`:5900+`display`; logins fail until a password is set by QMP."""

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

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)


def build_qemu_argv(spec: VmSpec) -> list[str]:
    """The full command line that starts `spec` daemonized. Same spec, same list."""
    paths = spec.paths
    for socket_path in (paths.qmp_socket, paths.serial_socket, paths.console_socket):
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"run directory path too long for a unix socket: {socket_path}")
    options: list[tuple[str, ...]] = [
        ("-name", f"guest={spec.uuid},debug-threads=on"),
        ("-uuid", spec.uuid),
        ("-machine", "pc"),
        ("-accel", spec.accelerator),
        # `host` only exists with KVM; qemu64 is TCG's default, spelled out for stable argv.
        ("-cpu", "host" if spec.accelerator == "kvm" else "qemu64"),
        ("-smp", str(spec.smp)),
        ("-m", f"{spec.mem_mb}M"),
        ("-nodefaults",),
        ("-no-user-config",),
        ("-display", "none"),
        ("-rtc", "base=utc"),
        ("-boot", "strict=on"),
        # A guest's power-off pauses QEMU instead of ending it, so the driver can read what
        # the guest did (block counters) before it ends the VM with `quit` (see vm.py).
        ("-action", "shutdown=pause"),
    ]
    argv = [spec.qemu_binary, *(word for option in options for word in option)]
    if spec.netns:
        # `ip netns exec` execs QEMU in place, so the pid and -daemonize behave the same.
        argv = ["ip", "netns", "exec", spec.netns, *argv]
    argv += _plumbing_args(paths)
    argv += ["-device", "VGA,id=video0"]
    argv += _disk_args(spec)
    for nic in sorted(spec.nics, key=lambda n: n.index):
        argv += _nic_args(nic)
    if spec.vnc is not None:
        argv += _vnc_args(spec.vnc)
    if spec.sandbox:
        # `spawn=deny` would forbid -daemonize's fork, and `elevateprivileges=deny` the
        # switch to `-runas`; both happen after the filter is installed.
        argv += ["-sandbox", "on,obsolete=deny,resourcecontrol=deny"]
    if spec.run_as:
        argv += ["-runas", spec.run_as]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    argv += ["-pidfile", str(paths.pidfile), "-daemonize"]
    return argv


def _opts(*pairs: tuple[str, object], head: str | None = None) -> str:
    """A QEMU option string; commas inside values are doubled, QEMU's escape."""
    items = [head] if head else []
    items += [f"{key}={str(value).replace(',', ',,')}" for key, value in pairs]
    return ",".join(items)


def _plumbing_args(paths: RunPaths) -> list[str]:
    return [
        "-chardev",
        _opts(
            ("id", "qmp"),
            ("path", paths.qmp_socket),
            ("server", "on"),
            ("wait", "off"),
            head="socket",
        ),
        "-mon",
        "chardev=qmp,mode=control",
        # The daemon is this socket's client and keeps the log; no `logfile=`: QEMU would
        # let a guest fill the disk with it. With no client connected, QEMU stores none.
        "-chardev",
        _opts(
            ("id", "serial0"),
            ("path", paths.serial_socket),
            ("server", "on"),
            ("wait", "off"),
            head="socket",
        ),
        "-serial",
        "chardev:serial0",
    ]


def _disk_args(spec: VmSpec) -> list[str]:
    disks = sorted(spec.disks, key=lambda disk: slot_sort_key(disk.slot))
    bootindex = {slot: position + 1 for position, slot in enumerate(spec.boot)}
    argv: list[str] = []
    for disk in disks:
        if disk.format == "luks":
            argv += [
                "-object",
                _opts(
                    ("id", disk.secret_id),
                    ("file", disk.secret_file),
                    ("format", "raw"),
                    head="secret",
                ),
            ]
    if any(disk.slot.startswith("scsi:") for disk in disks):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for disk in disks:
        read_only = "on" if disk.media == "cdrom" else "off"
        file_node = f"file-{disk.device_id}"
        argv += [
            "-blockdev",
            _opts(
                ("driver", "file"),
                ("node-name", file_node),
                ("filename", disk.path),
                ("read-only", read_only),
                ("discard", "unmap"),
            ),
        ]
        format_layer: list[tuple[str, object]] = [
            ("driver", disk.format),
            ("node-name", disk.node_name),
            ("file", file_node),
            ("read-only", read_only),
        ]
        if disk.format == "luks":
            format_layer.append(("key-secret", disk.secret_id))
        argv += ["-blockdev", _opts(*format_layer)]
        argv += ["-device", _device_opts(disk, bootindex.get(disk.slot))]
    return argv


def _device_opts(disk: DiskSpec, bootindex: int | None) -> str:
    match = _SLOT.fullmatch(disk.slot)
    assert match is not None  # checked by DiskSpec
    ide_bus, ide_unit, scsi_id, _block_index = match.groups()
    cdrom = disk.media == "cdrom"
    pairs: list[tuple[str, object]]
    if ide_bus is not None:
        head = "ide-cd" if cdrom else "ide-hd"
        pairs = [("bus", f"ide.{ide_bus}"), ("unit", ide_unit)]
    elif scsi_id is not None:
        head = "scsi-cd" if cdrom else "scsi-hd"
        pairs = [("bus", "scsi0.0"), ("channel", 0), ("scsi-id", scsi_id), ("lun", 0)]
    else:
        # virtio-blk has no cdrom kind; the drive is still read-only (see _disk_args).
        head = "virtio-blk-pci"
        pairs = []
    pairs += [("drive", disk.node_name), ("id", disk.device_id)]
    if not cdrom:
        # A full host disk pauses the VM (its write retried on `cont`, nothing lost) instead
        # of failing the guest's write; any other host error, read or write, is the guest's
        # to see as a disk error, as a failing real disk would show it.
        pairs += [("werror", "enospc"), ("rerror", "report")]
    if disk.shared:
        pairs.append(("share-rw", "on"))
    if bootindex is not None:
        pairs.append(("bootindex", bootindex))
    return _opts(*pairs, head=head)


def _nic_args(nic: NicSpec) -> list[str]:
    netdev_id = f"net{nic.index}"
    if isinstance(nic.backend, TapNetdev):
        # QEMU must not run ifup scripts: the network layer owns the tap.
        netdev = _opts(
            ("id", netdev_id),
            ("ifname", nic.backend.ifname),
            ("script", "no"),
            ("downscript", "no"),
            head="tap",
        )
    elif isinstance(nic.backend, StreamNetdev):
        # The helper made the socket before QEMU starts; QEMU connects as the client.
        netdev = _opts(
            ("id", netdev_id),
            ("server", "off"),
            ("addr.type", "unix"),
            ("addr.path", nic.backend.socket),
            head="stream",
        )
    else:
        user = nic.backend
        addressing = [
            (key, value)
            for key, value in (
                ("net", user.net),
                ("host", user.host),
                ("dhcpstart", user.dhcp_start),
                ("dns", user.dns),
            )
            if value is not None
        ]
        netdev = _opts(("id", netdev_id), *addressing, head="user")
    device = _opts(
        ("netdev", netdev_id),
        ("mac", nic.mac),
        ("id", f"nic-{nic.index}"),
        head=NIC_DEVICES[nic.model],
    )
    return ["-netdev", netdev, "-device", device]


def _vnc_args(vnc: VncSpec) -> list[str]:
    host = f"[{vnc.address}]" if ":" in vnc.address else vnc.address
    argv: list[str] = []
    options: list[tuple[str, object]] = [("password", "on")]
    if vnc.tls_dir is not None:
        argv += [
            "-object",
            _opts(
                ("id", "vnc-tls"),
                ("dir", vnc.tls_dir),
                ("endpoint", "server"),
                ("verify-peer", "off"),
                head="tls-creds-x509",
            ),
        ]
        options.append(("tls-creds", "vnc-tls"))
    # An absolute pointer (USB tablet) keeps the VNC mouse in step with the guest's.
    argv += ["-device", "piix3-usb-uhci,id=usb", "-device", "usb-tablet,bus=usb.0"]
    argv += ["-vnc", _opts(*options, head=f"{host}:{vnc.display}")]
    return argv


def choose_accelerator(
    setting: str,
    *,
    cpuinfo: Path = Path("/proc/cpuinfo"),
    kvm_device: Path = Path("/dev/kvm"),
) -> str:
    """`kvm` or `tcg` for a setting of `kvm`, `tcg` or `auto`.

    `auto` picks KVM only where the CPU advertises vmx or svm and /dev/kvm opens: some hosts
    offer a /dev/kvm that cannot run ordinary guests, and they do not advertise either flag.
    """
    if setting in ACCELERATORS:
        return setting
    if setting != "auto":
        raise ValueError(f"accelerator must be kvm, tcg or auto, not {setting!r}")
    try:
        flags = {
            flag
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
            for flag in line.partition(":")[2].split()
        }
        if not flags & {"vmx", "svm"}:
            return "tcg"
        # Read-write, as QEMU opens it: read-only access would not be enough to run guests.
        os.close(os.open(kvm_device, os.O_RDWR | os.O_CLOEXEC))
        return "kvm"
    except OSError:
        return "tcg"
