"""What a server's VM is made of: configuration, drives and NICs in, `VmSpec` out, no I/O."""

from pathlib import Path

import pytest

from openhosting.hypervisor.argv import build_qemu_argv
from openhosting.hypervisor.spec import (
    DiskSpec,
    NbdSource,
    NicSpec,
    TapNetdev,
    UserNetdev,
    VncSpec,
)
from openhosting.model.server import ServerConfig
from openhosting.services.drives.drives import AttachableDrive
from openhosting.services.servers.vm_specs import (
    DriveSecret,
    HostVmSettings,
    VmPlan,
    build_vm_spec,
    secret_path,
)

SERVER = "0f962616-2071-4173-be79-7dd084271edf"
ROOT = "08c92dd5-70a0-4f51-83d2-835919d254df"
DATA = "4af85ed3-0caa-4736-8a26-a33d7de0a122"
ISO = "5d1c3a4e-8f0b-4c2d-9e7a-1b2c3d4e5f60"
RUN = Path("/run/oh/0f962616")
DRIVES = Path("/var/lib/oh/drives")
TLS = Path("/var/lib/oh/vnc-tls")
PASSPHRASE = b"correct-horse-battery-staple"
HOST = HostVmSettings(accelerator="tcg", vnc_listen="127.0.0.1", vnc_tls_dir=TLS)


def plain(uuid: str, *, owned: bool = True, exclusive: bool = True) -> AttachableDrive:
    return AttachableDrive(uuid, DRIVES / uuid, None, owned=owned, exclusive=exclusive)


def encrypted(uuid: str) -> AttachableDrive:
    return AttachableDrive(uuid, DRIVES / uuid, PASSPHRASE, owned=True, exclusive=True)


def config(**properties: str) -> ServerConfig:
    return ServerConfig.from_properties({"name": "web", "cpu": "2000", "mem": "512", **properties})


def build(
    server: ServerConfig,
    drives: list[AttachableDrive] | None = None,
    *,
    host: HostVmSettings = HOST,
    display: int | None = None,
    nics: tuple[NicSpec, ...] = (),
) -> VmPlan:
    return build_vm_spec(
        SERVER, server, drives or [], run_dir=RUN, host=host, display=display, nics=nics
    )


def test_a_diskless_server_is_its_cpu_memory_and_the_hosts_settings() -> None:
    plan = build(config(cpu="5000", mem="768"))
    spec = plan.spec
    assert (spec.uuid, spec.mem_mb, spec.run_dir) == (SERVER, 768, RUN)
    assert spec.smp == 3  # `smp auto`: one vCPU per 2000 MHz, rounded up
    assert spec.disks == spec.nics == spec.boot == ()
    assert spec.vnc is None and plan.secrets == ()
    assert (spec.accelerator, spec.qemu_binary, spec.sandbox) == ("tcg", HOST.qemu_binary, True)
    assert spec.run_as is None and spec.netns is None


def test_an_explicit_smp_is_the_number_of_vcpus() -> None:
    assert build(config(cpu="5000", smp="1")).spec.smp == 1


def test_the_hosts_hardening_accelerator_and_namespace_go_into_every_vm() -> None:
    host = HostVmSettings(
        accelerator="kvm",
        vnc_listen="192.0.2.1",
        vnc_tls_dir=TLS,
        qemu_binary="/opt/qemu/bin/qemu-system-x86_64",
        sandbox=False,
        run_as="nobody",
        netns="oh-net",
    )
    spec = build(config(), host=host).spec
    assert spec.accelerator == "kvm"
    assert spec.qemu_binary == "/opt/qemu/bin/qemu-system-x86_64"
    assert (spec.sandbox, spec.run_as, spec.netns) == (False, "nobody", "oh-net")
    argv = build_qemu_argv(spec)
    assert argv[:5] == ["ip", "netns", "exec", "oh-net", "/opt/qemu/bin/qemu-system-x86_64"]
    assert "-sandbox" not in argv and argv[argv.index("-runas") + 1] == "nobody"


def test_each_attachment_is_a_raw_disk_of_its_drive_file_in_its_slot_and_media() -> None:
    server = config(**{"ide:0:0": ROOT, "scsi:0:2": DATA, "ide:1:0": ISO, "ide:1:0:media": "cdrom"})
    # Drives come in any order; each attachment finds its own by UUID.
    spec = build(server, [plain(ISO, owned=False), plain(DATA), plain(ROOT)]).spec
    # In the configuration's slot order: ide, then scsi (argv sorts them the same way).
    assert spec.disks == (
        DiskSpec("ide:0:0", DRIVES / ROOT, media="disk", format="raw"),
        DiskSpec("ide:1:0", DRIVES / ISO, media="cdrom", format="raw"),
        DiskSpec("scsi:0:2", DRIVES / DATA, media="disk", format="raw"),
    )


def test_slots_become_their_bus_and_a_cdrom_is_read_only() -> None:
    server = config(**{"ide:0:0": ROOT, "scsi:0:2": DATA, "block:1": ISO, "block:1:media": "cdrom"})
    devices = build_qemu_argv(build(server, [plain(ROOT), plain(DATA), plain(ISO)]).spec)
    text = "\n".join(devices)
    assert "ide-hd,bus=ide.0,unit=0,drive=drive-ide-0-0,id=ide-0-0" in text
    assert "scsi-hd,bus=scsi0.0,channel=0,scsi-id=2,lun=0,drive=drive-scsi-0-2" in text
    assert "virtio-scsi-pci,id=scsi0" in text
    assert "virtio-blk-pci,drive=drive-block-1,id=block-1" in text
    assert f"filename={DRIVES / ISO},read-only=on" in text
    assert f"filename={DRIVES / ROOT},read-only=off" in text


def test_a_shared_drive_lets_other_vms_write_it_too() -> None:
    server = config(**{"ide:0:0": ROOT, "scsi:0:1": DATA})
    spec = build(server, [plain(ROOT), plain(DATA, exclusive=False)]).spec
    assert [(disk.slot, disk.shared) for disk in spec.disks] == [
        ("ide:0:0", False),
        ("scsi:0:1", True),
    ]
    text = "\n".join(build_qemu_argv(spec))
    assert "drive=drive-scsi-0-1,id=scsi-0-1,werror=enospc,rerror=report,share-rw=on" in text
    # an exclusive drive shares nothing
    assert "drive=drive-ide-0-0,id=ide-0-0,werror=enospc,rerror=report\n" in text


def test_the_boot_order_is_the_configurations_first_boots_first() -> None:
    server = config(**{"ide:0:0": ROOT, "ide:0:1": DATA, "boot": "ide:0:1 ide:0:0"})
    spec = build(server, [plain(ROOT), plain(DATA)]).spec
    assert spec.boot == ("ide:0:1", "ide:0:0")
    argv = build_qemu_argv(spec)
    errors = "werror=enospc,rerror=report"
    assert f"ide-hd,bus=ide.0,unit=1,drive=drive-ide-0-1,id=ide-0-1,{errors},bootindex=1" in argv
    assert f"ide-hd,bus=ide.0,unit=0,drive=drive-ide-0-0,id=ide-0-0,{errors},bootindex=2" in argv


def test_without_a_boot_key_no_disk_has_a_boot_index() -> None:
    spec = build(config(**{"ide:0:0": ROOT}), [plain(ROOT)]).spec
    assert spec.boot == ()
    assert not any("bootindex" in word for word in build_qemu_argv(spec))


def test_an_encrypted_drive_is_luks_with_its_passphrase_in_a_file_not_in_the_spec() -> None:
    server = config(**{"ide:0:0": ROOT, "scsi:0:1": DATA})
    plan = build(server, [encrypted(ROOT), plain(DATA)])
    root, data = plan.spec.disks
    assert root.format == "luks" and root.secret_file == RUN / "secret-ide-0-0"
    assert data.format == "raw" and data.secret_file is None
    assert plan.secrets == (DriveSecret(RUN / "secret-ide-0-0", PASSPHRASE),)
    # Nothing that reaches QEMU's command line (or qemu.argv, or a log) holds the passphrase.
    assert PASSPHRASE.decode() not in " ".join(build_qemu_argv(plan.spec))
    assert PASSPHRASE.decode() not in repr(plan.spec)
    assert PASSPHRASE.decode() not in repr(plan)


def test_secret_files_are_named_by_slot_inside_the_run_directory() -> None:
    assert secret_path(RUN, "scsi:0:7") == RUN / "secret-scsi-0-7"
    assert secret_path(RUN, "block:3") == RUN / "secret-block-3"
    server = config(**{"ide:0:0": ROOT, "block:3": DATA})
    plan = build(server, [encrypted(ROOT), encrypted(DATA)])
    assert [secret.path for secret in plan.secrets] == [
        RUN / "secret-ide-0-0",
        RUN / "secret-block-3",
    ]


def test_building_writes_nothing(tmp_path: Path) -> None:
    build_vm_spec(
        SERVER,
        config(**{"ide:0:0": ROOT}),
        [encrypted(ROOT)],
        run_dir=tmp_path,
        host=HOST,
        display=2,
    )
    assert list(tmp_path.iterdir()) == []


def test_the_nics_acquired_for_the_start_are_the_vms_nics_unchanged() -> None:
    nics = (
        NicSpec(0, "virtio", "52:54:00:00:00:01", UserNetdev()),
        NicSpec(1, "rtl8139", "52:54:00:00:00:02", TapNetdev("ohtap7")),
    )
    server = config(**{"nic:0:model": "virtio", "nic:1:model": "rtl8139"})
    assert build(server, nics=nics).spec.nics == nics


def test_vnc_runs_only_with_a_display_on_the_hosts_listen_address() -> None:
    assert build(config(**{"vnc:password": "secret"})).spec.vnc is None
    spec = build(config(**{"vnc:password": "secret"}), display=4).spec
    assert spec.vnc == VncSpec("127.0.0.1", 4, None)
    # The password is set over QMP after start: never on the command line.
    assert "secret" not in " ".join(build_qemu_argv(spec))


def test_vnc_tls_uses_the_platforms_credentials_only_when_the_server_asks() -> None:
    with_tls = build(config(**{"vnc:password": "pw", "vnc:tls": "on"}), display=0).spec
    without = build(config(**{"vnc:password": "pw"}), display=0).spec
    assert with_tls.vnc == VncSpec("127.0.0.1", 0, TLS)
    assert without.vnc is not None and without.vnc.tls_dir is None


def test_the_same_inputs_give_the_same_spec() -> None:
    server = config(**{"ide:0:0": ROOT, "block:0": DATA, "boot": "block:0"})
    drives = [encrypted(ROOT), plain(DATA)]
    assert build(server, drives, display=1) == build(server, drives[::-1], display=1)


def test_an_attachment_without_its_drive_is_refused() -> None:
    with pytest.raises(ValueError, match=f"ide:0:0: drive {ROOT}"):
        build(config(**{"ide:0:0": ROOT}), [plain(DATA)])


def test_a_drive_another_host_serves_is_opened_over_nbd_and_named_for_no_agent() -> None:
    server = config(**{"ide:0:0": ROOT, "ide:0:1": DATA})
    here = AttachableDrive(ROOT, DRIVES / ROOT, None, owned=True, exclusive=True, host="hv-a")
    there = AttachableDrive(DATA, DRIVES / DATA, PASSPHRASE, True, True, host="hv-b", tier="ssd")
    source = NbdSource("10.0.0.12", 49160, DATA, "hv-b")
    plan = build_vm_spec(SERVER, server, [here, there], run_dir=RUN, host=HOST, nbd={DATA: source})
    root, data = plan.spec.disks
    assert (root.nbd, root.drive) == (None, ROOT)  # the agent of hv-a opens its own file
    assert (data.nbd, data.drive, data.tier) == (source, "", "")
    assert data.format == "luks" and plan.secrets == (
        DriveSecret(RUN / "secret-ide-0-1", PASSPHRASE),
    )
