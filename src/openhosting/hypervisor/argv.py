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
- A drive another host serves (`DiskSpec.nbd`) is an `nbd` protocol node under the same
  format or luks layer and device as a file's: over TLS only (the host's cluster
  certificate as client, the exporting host's name checked in the server's), so an
  encrypted drive's LUKS layer is opened here and only ciphertext crosses the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from openhosting.hypervisor.spec import (
    ACCELERATORS,
    MAX_SOCKET_PATH,
    NIC_DEVICES,
    SLOT_PATTERN,
    DiskSpec,
    NicSpec,
    RunPaths,
    StreamNetdev,
    TapNetdev,
    VmSpec,
    VncSpec,
)
from openhosting.model.server import slot_sort_key


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
        # `-S` too: once the state is in, the guest stays paused until a `cont`, so a live
        # migration's target takes its drives over (and locks them) only when the source
        # has let go of them (`late-block-activate`, see migration.py).
        argv += ["-incoming", "defer", "-S"]
    argv += ["-pidfile", str(paths.pidfile), "-daemonize"]
    return argv


def qemu_opts(*pairs: tuple[str, object], head: str | None = None) -> str:
    """A QEMU option string; commas inside values are doubled, QEMU's escape."""
    items = [head] if head else []
    items += [f"{key}={str(value).replace(',', ',,')}" for key, value in pairs]
    return ",".join(items)


def _listening_socket(chardev_id: str, path: Path) -> list[str]:
    """A chardev on a unix socket QEMU listens on, without waiting for its client."""
    return [
        "-chardev",
        qemu_opts(
            ("id", chardev_id), ("path", path), ("server", "on"), ("wait", "off"), head="socket"
        ),
    ]


def _plumbing_args(paths: RunPaths) -> list[str]:
    return [
        *_listening_socket("qmp", paths.qmp_socket),
        "-mon",
        "chardev=qmp,mode=control",
        # The daemon is this socket's client and keeps the log; no `logfile=`: QEMU would
        # let a guest fill the disk with it. With no client connected, QEMU stores none.
        *_listening_socket("serial0", paths.serial_socket),
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
                qemu_opts(
                    ("id", disk.secret_id),
                    ("file", disk.secret_file),
                    ("format", "raw"),
                    head="secret",
                ),
            ]
    if any(disk.nbd for disk in disks):
        if spec.nbd_tls_dir is None:
            raise ValueError("a disk over NBD needs this host's TLS credentials (nbd_tls_dir)")
        argv += ["-object", nbd_tls_object(spec.nbd_tls_dir)]
    if any(disk.slot.startswith("scsi:") for disk in disks):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for disk in disks:
        read_only = "on" if disk.media == "cdrom" else "off"
        file_node = disk.file_node
        argv += ["-blockdev", _protocol_node(disk, read_only)]
        format_layer: list[tuple[str, object]] = [
            ("driver", disk.format),
            ("node-name", disk.node_name),
            ("file", file_node),
            ("read-only", read_only),
        ]
        if disk.format == "luks":
            format_layer.append(("key-secret", disk.secret_id))
        argv += ["-blockdev", qemu_opts(*format_layer)]
        argv += ["-device", _device_opts(disk, bootindex.get(disk.slot))]
    return argv


def tls_creds_object(object_id: str, directory: Path, endpoint: str, *, verify_peer: bool) -> str:
    """A `tls-creds-x509` object reading its certificates from `directory`, for the
    `endpoint` (`server` or `client`) of a TLS connection; `verify_peer`: the other end's
    certificate is checked against the CA of `directory`."""
    return qemu_opts(
        ("id", object_id),
        ("dir", directory),
        ("endpoint", endpoint),
        ("verify-peer", "on" if verify_peer else "off"),
        head="tls-creds-x509",
    )


# The id of the `tls-creds-x509` object of a VM's disks over NBD.
NBD_TLS_ID = "nbd-tls"


def nbd_tls_object(directory: Path) -> str:
    """The client credentials of a VM's disks over NBD: its host's cluster certificate, the
    server's checked against the cluster CA (`verify-peer`)."""
    return tls_creds_object(NBD_TLS_ID, directory, "client", verify_peer=True)


def _protocol_node(disk: DiskSpec, read_only: str) -> str:
    """The node holding the drive's bytes as stored: its file here, or another host's NBD
    export of it (`tls-hostname`: the certificate must name the exporting host)."""
    if disk.nbd is None:
        return qemu_opts(
            ("driver", "file"),
            ("node-name", disk.file_node),
            ("filename", disk.path),
            ("read-only", read_only),
            ("discard", "unmap"),
        )
    return qemu_opts(
        ("driver", "nbd"),
        ("node-name", disk.file_node),
        ("server.type", "inet"),
        ("server.host", disk.nbd.host),
        ("server.port", disk.nbd.port),
        ("export", disk.nbd.export),
        ("tls-creds", NBD_TLS_ID),
        ("tls-hostname", disk.nbd.tls_hostname),
        ("read-only", read_only),
        ("discard", "unmap"),
    )


def _device_opts(disk: DiskSpec, bootindex: int | None) -> str:
    match = SLOT_PATTERN.fullmatch(disk.slot)
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
    return qemu_opts(*pairs, head=head)


def _nic_args(nic: NicSpec) -> list[str]:
    netdev_id = f"net{nic.index}"
    if isinstance(nic.backend, TapNetdev):
        # QEMU must not run ifup scripts: the network layer owns the tap.
        netdev = qemu_opts(
            ("id", netdev_id),
            ("ifname", nic.backend.ifname),
            ("script", "no"),
            ("downscript", "no"),
            head="tap",
        )
    elif isinstance(nic.backend, StreamNetdev):
        # The helper made the socket before QEMU starts; QEMU connects as the client.
        netdev = qemu_opts(
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
        netdev = qemu_opts(("id", netdev_id), *addressing, head="user")
    device = qemu_opts(
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
        argv += ["-object", tls_creds_object("vnc-tls", vnc.tls_dir, "server", verify_peer=False)]
        options.append(("tls-creds", "vnc-tls"))
    # An absolute pointer (USB tablet) keeps the VNC mouse in step with the guest's.
    argv += ["-device", "piix3-usb-uhci,id=usb", "-device", "usb-tablet,bus=usb.0"]
    argv += ["-vnc", qemu_opts(*options, head=f"{host}:{vnc.display}")]
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
