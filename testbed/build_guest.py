"""Build the tiny bootable test guest: a 25 MiB raw disk made from Debian's own packages.

The recipe: a busybox initramfs with the kernel modules for every device our QEMU driver
can give a guest, a FAT partition made as a plain file with syslinux on it, and an MBR disk
around it. No root, no loop devices, no mounting; the output is byte-reproducible, so it is
cached under ``~/.cache/openhosting/`` keyed by a hash of everything that goes into it.

What the guest does, on its serial port (ttyS0, 115200):

- prints ``OH-GUEST-BOOT`` as soon as /init runs (once per boot, so a reset prints it again);
- loads the disk, cdrom, NIC and ACPI modules, starts busybox ``acpid`` whose power-button
  handler prints ``OH-GUEST-POWEROFF`` and runs ``poweroff -f``;
- runs ``udhcpc`` on every NIC; each lease prints ``OH-GUEST-LEASE <iface> <mac> <ip>``
  (NIC names follow driver load order, so match NICs by MAC);
- prints ``OH-GUEST-READY`` (acpid is listening by then) and keeps a root shell (prompt
  ``oh# ``) on ttyS0 for tests to type commands into; the shell is restarted if it exits.

Use ``build_tiny_guest()`` from Python or run this file as a script (it prints the path).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when the build steps change in a way the hashed texts below do not show.
RECIPE_REVISION = "2"

BOOT_MARKER = "OH-GUEST-BOOT"
READY_MARKER = "OH-GUEST-READY"
LEASE_MARKER = "OH-GUEST-LEASE"
POWEROFF_MARKER = "OH-GUEST-POWEROFF"
PROMPT = "oh# "

DISK_BYTES = 25 * 1024 * 1024
PARTITION_START_SECTOR = 2048  # 1 MiB, where the FAT image goes
FAT_KIB = (DISK_BYTES - PARTITION_START_SECTOR * 512) // 1024
# Every file in the initramfs and on the FAT gets this mtime (2021-01-01), for reproducibility.
FIXED_MTIME = 1609459200

MODULES = (
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "e1000",
    "8139cp",
    "8139too",
    "button",
    "evdev",
)

SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")

INIT = f"""#!/bin/sh
# PID 1 of the openhosting tiny test guest.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo {BOOT_MARKER} > /dev/ttyS0
for m in $(cat /etc/modules); do modprobe "$m"; done
acpid -f -c /etc/acpi -l /dev/null &
# acpid opens the power button's input device after it starts: wait for that, so that READY
# means a power-button press will be seen.
for i in $(seq 50); do
    ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/event && break
    sleep 0.1
done
for path in /sys/class/net/*; do
    iface=${{path##*/}}
    [ "$iface" = lo ] && continue
    ip link set "$iface" up
    udhcpc -f -i "$iface" -s /etc/udhcpc.sh >/dev/null 2>&1 &
done
echo {READY_MARKER} > /dev/ttyS0
export PS1='{PROMPT}' HOME=/root
# PID 1 must never exit (the kernel would panic), so the console shell is restarted.
while true; do setsid cttyhack sh; done
"""

UDHCPC_SCRIPT = f"""#!/bin/sh
# udhcpc event hook: configure the NIC and report the lease on the serial port.
case "$1" in
bound|renew)
    ifconfig "$interface" "$ip" netmask "${{subnet:-255.255.255.0}}"
    [ -n "$router" ] && route add default gw "${{router%% *}}" dev "$interface" 2>/dev/null
    echo "{LEASE_MARKER} $interface $(cat /sys/class/net/$interface/address) $ip" > /dev/ttyS0
    ;;
esac
exit 0
"""

POWER_BUTTON_HANDLER = f"""#!/bin/sh
echo {POWEROFF_MARKER} > /dev/ttyS0
poweroff -f
"""

SYSLINUX_CFG = """DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 quiet panic=-1
"""

# A fixed disk identifier: sfdisk would otherwise pick a random one.
SFDISK_SCRIPT = f"""label: dos
label-id: 0x4f480001
unit: sectors

start={PARTITION_START_SECTOR}, type=e, bootable
"""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/openhosting`` or ``~/.cache/openhosting``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openhosting"


def kernel_version() -> str:
    """The newest Debian kernel that has both a vmlinuz and its modules installed."""
    candidates = [
        p.name.removeprefix("vmlinuz-")
        for p in Path("/boot").glob("vmlinuz-*")
        if (Path("/lib/modules") / p.name.removeprefix("vmlinuz-")).is_dir()
    ]
    if not candidates:
        raise RuntimeError("no kernel found: install the Debian package linux-image-amd64")

    def key(version: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", version)]

    return max(candidates, key=key)


def _run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    # Every tool here finishes in a second or two; 120 s only guards against a hang.
    done = subprocess.run(
        argv,
        cwd=cwd,
        input=stdin,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {message}")
    return done.stdout


def _tool_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    return (done.stdout + done.stderr).decode(errors="replace").splitlines()[0].strip()


def recipe_key(kver: str) -> str:
    """A hash of every input of the build, naming the cached image."""
    parts = [
        RECIPE_REVISION,
        kver,
        _tool_version(["busybox"]),
        _tool_version(["syslinux", "--version"]),
        " ".join(MODULES),
        INIT,
        UDHCPC_SCRIPT,
        POWER_BUTTON_HANDLER,
        SYSLINUX_CFG,
        SFDISK_SCRIPT,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_tiny_guest(cache_dir: Path | None = None) -> Path:
    """Return the path of the cached tiny guest disk, building it first if needed.

    The file is read-only: copy it before giving it to a VM.
    """
    cache_dir = cache_dir or default_cache_dir()
    kver = kernel_version()
    image = cache_dir / f"tiny-guest-{recipe_key(kver)}.raw"
    if image.exists():
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-guest-", dir=cache_dir) as tmp:
        work = Path(tmp)
        initrd = work / "initrd.gz"
        initrd.write_bytes(_build_initramfs(work / "root", kver))
        fat = _build_fat(work, kver, initrd)
        disk = work / "disk.raw"
        _build_disk(disk, fat)
        disk.chmod(0o444)
        # Atomic, so a concurrent builder or reader never sees half an image.
        os.replace(disk, image)
    return image


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _build_initramfs(root: Path, kver: str) -> bytes:
    for sub in ("proc", "sys", "dev", "tmp", "root", "var/log", "var/run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    busybox = root / "bin" / "busybox"
    busybox.parent.mkdir(parents=True)
    shutil.copyfile(shutil.which("busybox") or "/bin/busybox", busybox)
    busybox.chmod(0o755)
    for applet in _run(["busybox", "--list-full"]).decode().split():
        link = root / applet
        if link.name == "busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")

    module_root = Path("/lib/modules") / kver
    for module in MODULES:
        shown = _run(["modprobe", "-S", kver, "--show-depends", module]).decode()
        for line in shown.splitlines():
            words = line.split()
            if words and words[0] == "insmod":
                source = Path(words[1])
                target = root / source.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    # The builtin lists let the guest's modprobe treat built-in drivers as present.
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (module_root / name).exists():
            shutil.copyfile(module_root / name, root / "lib/modules" / kver / name)
    _run(["depmod", "-b", str(root), kver])

    _write(root / "init", INIT, 0o755)
    _write(root / "etc/modules", "\n".join(MODULES) + "\n", 0o644)
    _write(root / "etc/udhcpc.sh", UDHCPC_SCRIPT, 0o755)
    _write(root / "etc/acpi/PWRF/00000080", POWER_BUTTON_HANDLER, 0o755)

    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    for name in names:
        path = root / name
        if not path.is_symlink():
            # Modes and times are normalised; the umask and the clock must not leak in.
            executable = path.is_dir() or os.access(path, os.X_OK)
            path.chmod(0o755 if executable else 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    archive = _run(
        ["cpio", "--quiet", "--reproducible", "-o", "-H", "newc", "-R", "0:0"],
        cwd=root,
        stdin=("\n".join(names) + "\n").encode(),
    )
    return gzip.compress(archive, compresslevel=9, mtime=0)


def _build_fat(work: Path, kver: str, initrd: Path) -> Path:
    staged = work / "fat-files"
    staged.mkdir()
    shutil.copyfile(Path("/boot") / f"vmlinuz-{kver}", staged / "vmlinuz")
    shutil.copyfile(initrd, staged / "initrd.gz")
    (staged / "syslinux.cfg").write_text(SYSLINUX_CFG)
    for path in staged.iterdir():
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))

    fat = work / "fat.img"
    _run(["mkfs.vfat", "--invariant", "-n", "OHGUEST", "-C", str(fat), str(FAT_KIB)])
    # mtools takes "now" from SOURCE_DATE_EPOCH when it is set, and syslinux uses mtools.
    fixed_now = {"SOURCE_DATE_EPOCH": str(FIXED_MTIME)}
    for name in ("vmlinuz", "initrd.gz", "syslinux.cfg"):
        _run(["mcopy", "-m", "-i", str(fat), str(staged / name), f"::{name}"], env=fixed_now)
    _run(["syslinux", "--install", str(fat)], env=fixed_now)
    return fat


def _build_disk(disk: Path, fat: Path) -> None:
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    _run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
        stdin=SFDISK_SCRIPT.encode(),
    )
    _run(
        [
            "dd",
            f"if={SYSLINUX_MBR}",
            f"of={disk}",
            "bs=440",
            "count=1",
            "conv=notrunc",
            "status=none",
        ]
    )
    _run(["dd", f"if={fat}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"])


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the image and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to keep the image (default ~/.cache/openhosting)",
    )
    args = parser.parse_args(argv)
    print(build_tiny_guest(args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
