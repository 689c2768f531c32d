"""CPU quotas: the arithmetic, and a real cgroup limiting a real busy process."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from openhosting.hypervisor.cpu_quota import (
    CgroupLayout,
    apply_cpu_quota,
    find_cpu_cgroup,
    quota_us,
    read_cpu_quota,
    remove_cpu_group,
)


def test_quota_is_the_share_of_a_core() -> None:
    assert quota_us(2000, 2000) == 100_000
    assert quota_us(1000, 2000) == 50_000
    assert quota_us(4000, 2000) == 200_000  # two cores' worth
    assert quota_us(2, 2000) == 1_000  # the kernel's floor


def test_v1_layout_is_found_and_written(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("-1")
    layout = find_cpu_cgroup(tmp_path)
    assert layout == CgroupLayout(cpu, 1)
    server = str(uuid.uuid4())
    apply_cpu_quota(layout, server, 4242, 50_000)
    group = cpu / "openhosting" / server
    assert (group / "cpu.cfs_quota_us").read_text() == "50000"
    assert (group / "cgroup.procs").read_text() == "4242"
    assert read_cpu_quota(layout, server) == 50_000


def test_v2_layout_is_preferred_when_it_has_the_cpu_controller(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory")
    layout = find_cpu_cgroup(tmp_path)
    assert layout == CgroupLayout(tmp_path, 2)
    server = str(uuid.uuid4())
    apply_cpu_quota(layout, server, 1, 25_000)
    assert (tmp_path / "openhosting" / server / "cpu.max").read_text() == "25000 100000"
    assert read_cpu_quota(layout, server) == 25_000


def test_no_cpu_controller_means_no_layout(tmp_path: Path) -> None:
    assert find_cpu_cgroup(tmp_path) is None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def test_a_real_cgroup_holds_a_busy_process_to_its_quota() -> None:
    layout = find_cpu_cgroup()
    if layout is None:
        pytest.fail("this host has no cpu cgroup controller: cpu cannot be enforced")
    server = str(uuid.uuid4())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        apply_cpu_quota(layout, server, busy.pid, quota_us(400, 2000))  # 20 % of a core
        start = cpu_seconds(busy.pid)
        time.sleep(2.0)
        used = cpu_seconds(busy.pid) - start
        assert used < 0.2 * 2.0 * 1.5, f"used {used:.2f} s of CPU in 2 s"
    finally:
        busy.kill()
        busy.wait(timeout=10)
        time.sleep(0.1)
        remove_cpu_group(layout, server)
    assert not layout.group_of(server).exists()
