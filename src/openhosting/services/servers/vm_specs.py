"""A server's VM as QEMU is to run it: its configuration, attached drives and NICs turned into
a `VmSpec` for the hypervisor driver.

Pure: `build_vm_spec` is a function of its arguments, with no I/O, so what a server becomes
(disks in which slots and formats, boot order, vCPUs, VNC, the host's hardening) is tested
without QEMU or a platform. What the host contributes to every VM comes in as `HostVmSettings`;
what a start holds (NICs with their backends, a VNC display) comes in already acquired.

The passphrases of encrypted drives never enter the spec, which becomes QEMU's argv and the
run directory's `qemu.argv`: the spec names a file per drive (`secret_path`) and the plan
carries the passphrases beside it, for the caller to write just before QEMU starts and remove
right after.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from openhosting.hypervisor.spec import (
    DiskSpec,
    DriveSecret,
    HostVmSettings,
    NbdSource,
    NicSpec,
    VmSpec,
    VncSpec,
)
from openhosting.model.server import ServerConfig
from openhosting.services.drives.drives import AttachableDrive


@dataclass(frozen=True)
class VmPlan:
    """A VM ready to start: its spec, and the secret files to write before and remove after."""

    spec: VmSpec
    secrets: tuple[DriveSecret, ...] = ()


def secret_path(run_dir: Path, slot: str) -> Path:
    """The file in the run directory holding the passphrase of the drive in `slot`."""
    return run_dir / f"secret-{slot.replace(':', '-')}"


def build_vm_spec(
    uuid: str,
    config: ServerConfig,
    drives: Sequence[AttachableDrive],
    *,
    run_dir: Path,
    host: HostVmSettings,
    display: int | None = None,
    nics: tuple[NicSpec, ...] = (),
    nbd: Mapping[str, NbdSource] | None = None,
    cached: Mapping[str, str] | None = None,
) -> VmPlan:
    """The VM of server `uuid` with `config`, its attached `drives` (one per attachment, in
    any order), the NICs it acquired and its VNC `display` (None: no VNC server). `nbd`:
    where another host serves each drive (by UUID) that is not on the VM's host. `cached`:
    the generation of each standard drive (by UUID) the VM opens from its host's image cache.

    Raises `ValueError` if an attachment has no drive among `drives`, or if the result is not
    a valid `VmSpec` (see there).
    """
    by_drive = {drive.uuid: drive for drive in drives}
    disks: list[DiskSpec] = []
    secrets: list[DriveSecret] = []
    for attachment in config.drives:
        drive = by_drive.get(attachment.drive)
        if drive is None:
            raise ValueError(f"{attachment.slot}: drive {attachment.drive} was not given")
        secret_file = None
        if drive.passphrase is not None:
            secret_file = secret_path(run_dir, attachment.slot)
            secrets.append(DriveSecret(secret_file, drive.passphrase))
        source = (nbd or {}).get(drive.uuid)
        generation = (cached or {}).get(drive.uuid, "")
        # Named for the agent of the host holding it, which finds its own file; a drive
        # another host serves is opened over NBD instead, with the same layers on top; a
        # standard drive of another host, from the copy in the VM's host's image cache.
        named = bool(drive.host) and source is None and not generation
        disks.append(
            DiskSpec(
                slot=attachment.slot,
                path=drive.path,
                media=attachment.media,
                # Always explicit: QEMU never probes the format of user data.
                format="luks" if secret_file is not None else "raw",
                secret_file=secret_file,
                shared=not drive.exclusive,
                drive=drive.uuid if named or generation else "",
                tier=drive.tier if named else "",
                nbd=source,
                cache=generation,
            )
        )
    vnc = None
    if display is not None:
        tls_dir = host.vnc_tls_dir if config.vnc_tls else None
        vnc = VncSpec(host.vnc_listen, display, tls_dir)
    spec = VmSpec(
        uuid=uuid,
        smp=config.smp_cores,
        mem_mb=config.mem,
        run_dir=run_dir,
        accelerator=host.accelerator,
        disks=tuple(disks),
        boot=config.boot,
        nics=nics,
        vnc=vnc,
        qemu_binary=host.qemu_binary,
        sandbox=host.sandbox,
        run_as=host.run_as,
        netns=host.netns,
    )
    return VmPlan(spec, tuple(secrets))
