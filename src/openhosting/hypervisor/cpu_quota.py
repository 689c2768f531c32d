"""Enforcing a server's `cpu` (core MHz) as a CPU quota on its QEMU process, with cgroups.

A server of `cpu` MHz on a host whose cores run at `core_mhz` may use `cpu / core_mhz` of one
core: that fraction of every scheduling period (CFS bandwidth control). cgroup v2 (`cpu.max`)
is used where its cpu controller is available, else cgroup v1 (`cpu.cfs_quota_us`), which is
what our machines have. Each server gets a group `openhosting/<server uuid>`.
"""

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("openhosting.hypervisor")

PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor
GROUP = "openhosting"


def quota_us(cpu_mhz: int, core_mhz: int, period_us: int = PERIOD_US) -> int:
    """The CFS quota (µs per period) that gives `cpu_mhz` worth of a `core_mhz` core."""
    return max(MIN_QUOTA_US, cpu_mhz * period_us // core_mhz)


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cpu controller is mounted, and which version it speaks."""

    root: Path
    version: int  # 1 or 2

    def group_of(self, server: str) -> Path:
        return self.root / GROUP / server


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


def apply_cpu_quota(layout: CgroupLayout, server: str, pid: int, quota: int) -> None:
    """Put process `pid` (all its threads) in the server's group, limited to `quota` µs."""
    group = layout.group_of(server)
    group.mkdir(parents=True, exist_ok=True)
    if layout.version == 2:
        parent_control = group.parent / "cgroup.subtree_control"
        with contextlib.suppress(OSError):  # already enabled, or managed by someone else
            parent_control.write_text("+cpu")
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))


def read_cpu_quota(layout: CgroupLayout, server: str) -> int | None:
    """The quota (µs per period) of the server's group, None when unlimited or absent."""
    group = layout.group_of(server)
    try:
        if layout.version == 2:
            text = (group / "cpu.max").read_text().split()[0]
        else:
            text = (group / "cpu.cfs_quota_us").read_text().strip()
    except OSError:
        return None
    return None if text in ("max", "-1") else int(text)


def remove_cpu_group(layout: CgroupLayout, server: str, wait: float = 2.0) -> None:
    """Remove the server's group once its process is gone. The threads of a process that
    just exited can linger a moment, keeping the group busy: try again for `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(layout.group_of(server))
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            if time.monotonic() >= deadline:
                log.warning("event=cgroup_busy server=%s", server)
                return
            time.sleep(0.05)
