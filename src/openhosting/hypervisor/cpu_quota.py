"""Enforcing a server's `cpu` (core MHz) as a CPU quota on its guest's vCPU threads, with
cgroups.

A server of `cpu` MHz on a host whose cores run at `core_mhz` may use `cpu / core_mhz` of one
core: that fraction of every scheduling period (CFS bandwidth control), shared by all its
vCPUs. cgroup v2 (`cpu.max`) is used where its cpu controller is available, else cgroup v1
(`cpu.cfs_quota_us`), which is what our machines have.

As libvirt does (its separate `vcpu` and `emulator` quotas), the quota is on the vCPU threads
only: each server gets a group `openhosting/<server uuid>`, unlimited, holding QEMU's process
(its main loop, the QMP monitor, I/O threads), and a child `vcpus` holding the vCPU threads
with the quota. A quota on the whole process would starve the monitor too, leaving a server
of small `cpu` deaf to reset, stop and destroy. In v2 the child is a threaded cgroup, the
only kind that may hold some threads of a process.
"""

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("openhosting.hypervisor")

PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor
# The least a guest is given, whatever its `cpu` (the API accepts `cpu` from 1: libcloud sends
# `cpu 2`): below about 5% of a core a guest kernel misses its timer ticks, and a vCPU thread
# throttled while it holds QEMU's global lock holds it for longer.
FLOOR_MHZ = 100
GROUP = "openhosting"
VCPUS = "vcpus"


def quota_us(cpu_mhz: int, core_mhz: int, period_us: int = PERIOD_US) -> int:
    """The CFS quota (µs per period) that gives `cpu_mhz` worth of a `core_mhz` core, and
    never less than `FLOOR_MHZ` worth."""
    return max(MIN_QUOTA_US, max(cpu_mhz, FLOOR_MHZ) * period_us // core_mhz)


def threads_to_limit(pid: int, vcpu_tids: Iterable[int]) -> list[int]:
    """The threads that go in the `vcpus` group: the vCPU threads QEMU reported, never its
    main thread (limiting that one would starve the monitor again)."""
    return sorted(set(vcpu_tids) - {pid})


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cpu controller is mounted, and which version it speaks."""

    root: Path
    version: int  # 1 or 2

    def group_of(self, server: str) -> Path:
        """The server's group: QEMU's process, unlimited."""
        return self.root / GROUP / server

    def vcpu_group_of(self, server: str) -> Path:
        """The child of the server's group holding its vCPU threads, with the quota."""
        return self.group_of(server) / VCPUS

    @property
    def threads_file(self) -> str:
        """The file of a group listing (and taking) single threads."""
        return "cgroup.threads" if self.version == 2 else "tasks"


def find_cpu_cgroup(sys_fs_cgroup: Path = Path("/sys/fs/cgroup")) -> CgroupLayout | None:
    """The cpu controller's hierarchy on this host, or None when there is none to use."""
    for unified in (sys_fs_cgroup, sys_fs_cgroup / "unified"):
        controllers = unified / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return CgroupLayout(unified, 2)
    v1 = sys_fs_cgroup / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return CgroupLayout(v1, 1)
    return None


def place_vm_threads(
    layout: CgroupLayout, server: str, pid: int, vcpu_tids: Iterable[int], quota: int
) -> None:
    """Put QEMU process `pid` in the server's group and its vCPU threads `vcpu_tids` in the
    `vcpus` child, limited to `quota` µs per period. Safe to repeat (a live `set`, adoption
    after a daemon restart): it also puts right a group left by an older layout."""
    limited = threads_to_limit(pid, vcpu_tids)
    if not limited:
        raise ValueError(f"no vCPU thread of process {pid} to limit")
    group = _make_groups(layout, server)
    set_vcpu_quota(layout, server, quota)
    # The whole process first (all its threads at once, so none created meanwhile is
    # missed), then the vCPU threads on to their limited child.
    (group / "cgroup.procs").write_text(str(pid))
    for tid in limited:
        (layout.vcpu_group_of(server) / layout.threads_file).write_text(str(tid))


def _make_groups(layout: CgroupLayout, server: str) -> Path:
    group = layout.group_of(server)
    vcpus = layout.vcpu_group_of(server)
    vcpus.mkdir(parents=True, exist_ok=True)
    if layout.version == 2:
        for parent in (layout.root, group.parent):
            with contextlib.suppress(OSError):  # already enabled, or managed by someone else
                (parent / "cgroup.subtree_control").write_text("+cpu")
        (vcpus / "cgroup.type").write_text("threaded")
        (group / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text(f"max {PERIOD_US}")
    else:
        # Unlimited: the quota is the child's. A group made by an older daemon had it here.
        (group / "cpu.cfs_quota_us").write_text("-1")
    return group


def set_vcpu_quota(layout: CgroupLayout, server: str, quota: int) -> None:
    """Limit the server's vCPU threads to `quota` µs per period."""
    vcpus = layout.vcpu_group_of(server)
    if layout.version == 2:
        (vcpus / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        (vcpus / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (vcpus / "cpu.cfs_quota_us").write_text(str(quota))


def read_cpu_quota(layout: CgroupLayout, server: str) -> int | None:
    """The quota (µs per period) of the server's vCPUs, None when unlimited or absent."""
    vcpus = layout.vcpu_group_of(server)
    try:
        if layout.version == 2:
            text = (vcpus / "cpu.max").read_text().split()[0]
        else:
            text = (vcpus / "cpu.cfs_quota_us").read_text().strip()
    except OSError:
        return None
    return None if text in ("max", "-1") else int(text)


def limited_threads(layout: CgroupLayout, server: str) -> set[int]:
    """The threads now in the server's `vcpus` group (empty when it has none)."""
    try:
        text = (layout.vcpu_group_of(server) / layout.threads_file).read_text()
    except FileNotFoundError:
        return set()
    return {int(line) for line in text.split()}


def remove_cpu_group(layout: CgroupLayout, server: str, wait: float = 2.0) -> None:
    """Remove the server's groups once its process is gone. The threads of a process that
    just exited can linger a moment, keeping a group busy: try again for `wait` seconds."""
    deadline = time.monotonic() + wait
    for group in (layout.vcpu_group_of(server), layout.group_of(server)):
        if not _remove_group(group, deadline):
            log.warning("event=cgroup_busy server=%s group=%s", server, group)
            return


def _remove_group(group: Path, deadline: float) -> bool:
    while True:
        try:
            os.rmdir(group)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
