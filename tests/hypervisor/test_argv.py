"""The QEMU command line as text: golden expectations, validation, accelerator choice."""

from pathlib import Path
from typing import Any

import pytest

from openhosting.hypervisor.argv import build_qemu_argv, choose_accelerator
from openhosting.hypervisor.spec import (
    DiskSpec,
    NbdSource,
    NicSpec,
    RunPaths,
    TapNetdev,
    VmSpec,
    VncSpec,
    slot_for_device_id,
)

UUID = "0f962616-2071-4173-be79-7dd084271edf"
RUN = Path("/run/oh/0f962616")
D = Path("/var/lib/oh/drives")


def as_lines(argv: list[str]) -> str:
    """The argv with each option and its value on one line, as an operator would read it."""
    lines = [argv[0]]
    for word in argv[1:]:
        if word.startswith("-"):
            lines.append(word)
        else:
            lines[-1] += f" {word}"
    return "\n".join(lines)


def spec(**changes: object) -> VmSpec:
    fields: dict[str, Any] = {"uuid": UUID, "smp": 2, "mem_mb": 512, "run_dir": RUN}
    fields.update(changes)
    return VmSpec(**fields)


HEAD = f"""qemu-system-x86_64
-name guest={UUID},debug-threads=on
-uuid {UUID}
-machine pc
-accel tcg
-cpu qemu64
-smp 2
-m 512M
-nodefaults
-no-user-config
-display none
-rtc base=utc
-boot strict=on
-action shutdown=pause
-chardev socket,id=qmp,path={RUN}/qmp.sock,server=on,wait=off
-mon chardev=qmp,mode=control
-chardev socket,id=serial0,path={RUN}/serial.sock,server=on,wait=off
-serial chardev:serial0
-device VGA,id=video0"""

TAIL = f"""-sandbox on,obsolete=deny,resourcecontrol=deny
-pidfile {RUN}/qemu.pid
-daemonize"""


def test_a_diskless_vm_has_only_the_machine_and_its_plumbing() -> None:
    assert as_lines(build_qemu_argv(spec())) == f"{HEAD}\n{TAIL}"


def test_a_full_vm_is_rendered_sorted_by_slot_with_boot_order() -> None:
    vm = spec(
        accelerator="kvm",
        disks=(
            DiskSpec("block:1", D / "b1", format="luks", secret_file=RUN / "b1.key"),
            DiskSpec("scsi:0:5", D / "s5", media="cdrom"),
            DiskSpec("ide:0:0", D / "i00"),
            DiskSpec("scsi:0:0", D / "s0"),
            DiskSpec("ide:1:1", D / "cd", media="cdrom"),
        ),
        boot=("scsi:0:0", "ide:0:0"),
        nics=(
            NicSpec(1, "rtl8139", "52:54:00:00:00:02", TapNetdev("ohtap7")),
            NicSpec(0, "virtio", "52:54:00:00:00:01"),
        ),
        vnc=VncSpec("192.0.2.7", 3),
    )
    expected = f"""-object secret,id=secret-block-1,file={RUN}/b1.key,format=raw
-device virtio-scsi-pci,id=scsi0
-blockdev driver=file,node-name=file-ide-0-0,filename={D}/i00,read-only=off,discard=unmap
-blockdev driver=raw,node-name=drive-ide-0-0,file=file-ide-0-0,read-only=off
-device ide-hd,bus=ide.0,unit=0,drive=drive-ide-0-0,id=ide-0-0,werror=enospc,rerror=report,bootindex=2
-blockdev driver=file,node-name=file-ide-1-1,filename={D}/cd,read-only=on,discard=unmap
-blockdev driver=raw,node-name=drive-ide-1-1,file=file-ide-1-1,read-only=on
-device ide-cd,bus=ide.1,unit=1,drive=drive-ide-1-1,id=ide-1-1
-blockdev driver=file,node-name=file-scsi-0-0,filename={D}/s0,read-only=off,discard=unmap
-blockdev driver=raw,node-name=drive-scsi-0-0,file=file-scsi-0-0,read-only=off
-device scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi-0-0,id=scsi-0-0,werror=enospc,rerror=report,bootindex=1
-blockdev driver=file,node-name=file-scsi-0-5,filename={D}/s5,read-only=on,discard=unmap
-blockdev driver=raw,node-name=drive-scsi-0-5,file=file-scsi-0-5,read-only=on
-device scsi-cd,bus=scsi0.0,channel=0,scsi-id=5,lun=0,drive=drive-scsi-0-5,id=scsi-0-5
-blockdev driver=file,node-name=file-block-1,filename={D}/b1,read-only=off,discard=unmap
-blockdev driver=luks,node-name=drive-block-1,file=file-block-1,read-only=off,key-secret=secret-block-1
-device virtio-blk-pci,drive=drive-block-1,id=block-1,werror=enospc,rerror=report
-netdev user,id=net0
-device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic-0
-netdev tap,id=net1,ifname=ohtap7,script=no,downscript=no
-device rtl8139,netdev=net1,mac=52:54:00:00:00:02,id=nic-1
-device piix3-usb-uhci,id=usb
-device usb-tablet,bus=usb.0
-vnc 192.0.2.7:3,password=on"""  # noqa: E501
    head = HEAD.replace("-accel tcg\n-cpu qemu64", "-accel kvm\n-cpu host")
    assert as_lines(build_qemu_argv(vm)) == f"{head}\n{expected}\n{TAIL}"


def test_the_same_spec_gives_the_same_argv_whatever_the_input_order() -> None:
    disks = (DiskSpec("block:0", D / "a"), DiskSpec("ide:0:1", D / "b"))
    nics = (NicSpec(0, "e1000", "52:54:00:00:00:01"), NicSpec(1, "e1000", "52:54:00:00:00:02"))
    one = build_qemu_argv(spec(disks=disks, nics=nics))
    other = build_qemu_argv(spec(disks=disks[::-1], nics=nics[::-1]))
    assert one == other


def test_no_secret_value_appears_only_the_file_that_holds_it(tmp_path: Path) -> None:
    key = tmp_path / "drive.key"
    key.write_text("hunter2-passphrase")
    argv = build_qemu_argv(
        spec(disks=(DiskSpec("ide:0:0", D / "x", format="luks", secret_file=key),))
    )
    assert "hunter2" not in " ".join(argv)
    assert f"secret,id=secret-ide-0-0,file={key},format=raw" in argv


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    argv = build_qemu_argv(spec(disks=(DiskSpec("ide:0:0", Path("/d/a,b,format=qcow2")),)))
    assert (
        "driver=file,node-name=file-ide-0-0,filename=/d/a,,b,,format=qcow2,read-only=off,"
        "discard=unmap"
    ) in argv


def test_vnc_with_tls_and_an_ipv6_address() -> None:
    argv = as_lines(build_qemu_argv(spec(vnc=VncSpec("::1", 0, tls_dir=Path("/etc/oh/vnc")))))
    assert (
        "-object tls-creds-x509,id=vnc-tls,dir=/etc/oh/vnc,endpoint=server,verify-peer=off"
        in argv.splitlines()
    )
    assert "-vnc [::1]:0,password=on,tls-creds=vnc-tls" in argv.splitlines()


def test_block_slot_cdrom_is_a_read_only_virtio_disk() -> None:
    argv = build_qemu_argv(spec(disks=(DiskSpec("block:7", D / "iso", media="cdrom"),)))
    assert "driver=raw,node-name=drive-block-7,file=file-block-7,read-only=on" in argv
    assert "virtio-blk-pci,drive=drive-block-7,id=block-7" in argv


def test_a_full_host_disk_pauses_the_vm_and_other_errors_reach_the_guest() -> None:
    # werror=enospc: QEMU stops the VM on ENOSPC and retries the write on `cont`.
    argv = build_qemu_argv(spec(disks=(DiskSpec("block:0", D / "a"), DiskSpec("ide:0:1", D / "b"))))
    errors = "werror=enospc,rerror=report"
    assert f"virtio-blk-pci,drive=drive-block-0,id=block-0,{errors}" in argv
    assert f"ide-hd,bus=ide.0,unit=1,drive=drive-ide-0-1,id=ide-0-1,{errors}" in argv


def test_run_paths_live_in_the_run_directory() -> None:
    paths = RunPaths(RUN)
    assert [
        paths.pidfile.name,
        paths.qmp_socket.name,
        paths.serial_socket.name,
        paths.console_socket.name,
        paths.serial_log.name,
        paths.argv_file.name,
    ] == ["qemu.pid", "qmp.sock", "serial.sock", "console.sock", "serial.log", "qemu.argv"]
    assert spec().paths == paths


def test_a_run_directory_too_long_for_unix_sockets_is_refused() -> None:
    with pytest.raises(ValueError, match="too long for a unix socket"):
        build_qemu_argv(spec(run_dir=Path("/x" * 60)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"uuid": UUID.upper()}, "not a lowercase UUID"),
        ({"accelerator": "xen"}, "accelerator must be kvm or tcg"),
        ({"disks": (DiskSpec("ide:0:0", D / "a"), DiskSpec("ide:0:0", D / "b"))}, "used twice"),
        ({"boot": ("ide:0:0",)}, "boot names slots without a disk"),
        (
            {
                "nics": (
                    NicSpec(0, "e1000", "52:54:00:00:00:01"),
                    NicSpec(0, "e1000", "52:54:00:00:00:02"),
                )
            },
            "NIC index is used twice",
        ),
    ],
)
def test_inconsistent_vm_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**changes)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"slot": "ide:2:0"}, "not a device slot"),
        ({"media": "tape"}, "media must be disk or cdrom"),
        ({"format": "qcow2"}, "format must be raw or luks"),
        ({"format": "luks"}, "a secret file is needed"),
        ({"secret_file": Path("/k")}, "a secret file is needed"),
    ],
)
def test_inconsistent_disk_specs_are_refused(fields: dict[str, object], message: str) -> None:
    arguments: dict[str, Any] = {"slot": "ide:0:0", "path": D / "a", **fields}
    with pytest.raises(ValueError, match=message):
        DiskSpec(**arguments)


def test_nic_specs_need_a_known_model_and_a_lowercase_mac() -> None:
    with pytest.raises(ValueError, match="unknown NIC model"):
        NicSpec(0, "ne2k", "52:54:00:00:00:01")
    with pytest.raises(ValueError, match="not a lowercase MAC"):
        NicSpec(0, "e1000", "52:54:00:00:00:0A")
    with pytest.raises(ValueError, match="not an interface name"):
        TapNetdev("tap0; rm -rf /")


def test_device_ids_map_back_to_slots() -> None:
    for slot in ("ide:0:1", "scsi:0:7", "block:3"):
        assert slot_for_device_id(DiskSpec(slot, D / "a").device_id) == slot
    assert slot_for_device_id("video0") is None
    assert slot_for_device_id("nic-0") is None


def write_cpuinfo(path: Path, flags: str) -> Path:
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    return path


def test_auto_chooses_kvm_only_with_vmx_or_svm_and_an_openable_dev_kvm(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    vmx = write_cpuinfo(tmp_path / "vmx", "vmx lm")
    svm = write_cpuinfo(tmp_path / "svm", "svm lm")
    plain = write_cpuinfo(tmp_path / "plain", "hypervisor lm")
    absent = tmp_path / "absent"
    assert choose_accelerator("auto", cpuinfo=vmx, kvm_device=kvm) == "kvm"
    assert choose_accelerator("auto", cpuinfo=svm, kvm_device=kvm) == "kvm"
    assert choose_accelerator("auto", cpuinfo=plain, kvm_device=kvm) == "tcg"
    assert choose_accelerator("auto", cpuinfo=vmx, kvm_device=absent) == "tcg"
    assert choose_accelerator("auto", cpuinfo=absent, kvm_device=kvm) == "tcg"


def test_an_explicit_accelerator_is_taken_as_is_and_others_are_refused(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert choose_accelerator("kvm", cpuinfo=absent, kvm_device=absent) == "kvm"
    assert choose_accelerator("tcg") == "tcg"
    with pytest.raises(ValueError, match="kvm, tcg or auto"):
        choose_accelerator("hvf")


def test_qemu_can_drop_to_an_unprivileged_user_and_go_without_the_sandbox() -> None:
    spec = VmSpec(uuid=UUID, smp=1, mem_mb=64, run_dir=Path(RUN), run_as="nobody", sandbox=False)
    argv = build_qemu_argv(spec)
    assert argv[argv.index("-runas") + 1] == "nobody"
    assert "-sandbox" not in argv


def test_a_restoring_vm_waits_paused_for_its_saved_state_instead_of_booting() -> None:
    spec = VmSpec(uuid=UUID, smp=1, mem_mb=64, run_dir=Path(RUN), incoming=True)
    argv = build_qemu_argv(spec)
    # Paused (-S) once the state is in: a migration's target runs only when told to `cont`.
    assert argv[-6:] == ["-incoming", "defer", "-S", "-pidfile", f"{RUN}/qemu.pid", "-daemonize"]
    # Everything else is the argv the VM ran with: the saved devices must match it.
    without = build_qemu_argv(VmSpec(uuid=UUID, smp=1, mem_mb=64, run_dir=Path(RUN)))
    position = argv.index("-incoming")
    assert argv[:position] + argv[position + 3 :] == without
    assert "-incoming" not in without


def test_a_drive_another_host_serves_is_an_nbd_node_over_tls_under_the_same_layers() -> None:
    source = NbdSource("10.0.0.12", 49160, "4af85ed3-0caa-4736-8a26-a33d7de0a122", "hv-b")
    secret = RUN / "secret-ide-0-1"
    disks = (
        DiskSpec("ide:0:0", D / "a.img"),
        DiskSpec("ide:0:1", D / "b.img", format="luks", secret_file=secret, nbd=source),
    )
    argv = build_qemu_argv(spec(disks=disks, nbd_tls_dir=Path("/var/lib/oh/migration-tls")))
    lines = as_lines(argv).splitlines()
    assert (
        "-object tls-creds-x509,id=nbd-tls,dir=/var/lib/oh/migration-tls,endpoint=client,"
        "verify-peer=on"
    ) in lines
    assert (
        "-blockdev driver=nbd,node-name=file-ide-0-1,server.type=inet,server.host=10.0.0.12,"
        "server.port=49160,export=4af85ed3-0caa-4736-8a26-a33d7de0a122,tls-creds=nbd-tls,"
        "tls-hostname=hv-b,read-only=off,discard=unmap"
    ) in lines
    # Opened here with its passphrase: the other host serves ciphertext only.
    assert (
        "-blockdev driver=luks,node-name=drive-ide-0-1,file=file-ide-0-1,read-only=off,"
        "key-secret=secret-ide-0-1"
    ) in lines
    assert "-device ide-hd,bus=ide.0,unit=1,drive=drive-ide-0-1,id=ide-0-1,werror=enospc," \
        "rerror=report" in lines  # fmt: skip
    assert f"filename={D / 'b.img'}" not in " ".join(argv)


def test_a_drive_over_nbd_is_never_opened_without_tls() -> None:
    source = NbdSource("10.0.0.12", 49160, "4af85ed3-0caa-4736-8a26-a33d7de0a122", "hv-b")
    with pytest.raises(ValueError, match="TLS"):
        build_qemu_argv(spec(disks=(DiskSpec("ide:0:0", D / "b.img", nbd=source),)))


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "10.0.0.12,id=x"},  # no option of QEMU's may be slipped in
        {"tls_hostname": "hv-b,tls-creds="},
        {"port": 0},
        {"export": "../../etc/passwd"},
    ],
)
def test_an_nbd_source_is_a_host_a_port_and_a_drives_uuid(fields: dict[str, Any]) -> None:
    good: dict[str, Any] = {
        "host": "10.0.0.12",
        "port": 49160,
        "export": "4af85ed3-0caa-4736-8a26-a33d7de0a122",
        "tls_hostname": "hv-b",
    }
    with pytest.raises(ValueError):
        NbdSource(**{**good, **fields})
