"""CPU quotas: the arithmetic, the group layout (vCPU threads limited, QEMU's own threads
free), and a real cgroup limiting the "vCPU" threads of a real busy process."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from openhosting.hypervisor.cpu_quota import (
    CgroupLayout,
    find_cpu_cgroup,
    limited_threads,
    place_vm_threads,
    quota_us,
    read_cpu_quota,
    remove_cpu_group,
    set_vcpu_quota,
    threads_to_limit,
)


def test_quota_is_the_share_of_a_core() -> None:
    assert quota_us(2000, 2000) == 100_000
    assert quota_us(1000, 2000) == 50_000
    assert quota_us(500, 2000) == 25_000
    assert quota_us(4000, 2000) == 200_000  # two cores' worth
    assert quota_us(2, 2000) == 5_000  # a sane floor: 100 MHz's worth
    assert quota_us(2, 200_000) == 1_000  # and never below the kernel's


def test_only_vcpu_threads_are_limited_never_the_main_thread() -> None:
    assert threads_to_limit(100, [102, 101, 102]) == [101, 102]
    assert threads_to_limit(100, [100, 101]) == [101]
    assert threads_to_limit(100, []) == []


def v1_layout(tmp_path: Path) -> CgroupLayout:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("-1")
    layout = find_cpu_cgroup(tmp_path)
    assert layout == CgroupLayout(cpu, 1)
    return layout


def test_v1_process_goes_in_the_server_group_and_its_vcpu_in_the_limited_child(
    tmp_path: Path,
) -> None:
    layout = v1_layout(tmp_path)
    server = str(uuid.uuid4())
    place_vm_threads(layout, server, 4242, [4245], 50_000)
    group = layout.root / "openhosting" / server
    assert (group / "cgroup.procs").read_text() == "4242"
    assert (group / "cpu.cfs_quota_us").read_text() == "-1"  # QEMU itself: unlimited
    assert (group / "vcpus" / "tasks").read_text() == "4245"
    assert (group / "vcpus" / "cpu.cfs_quota_us").read_text() == "50000"
    assert (group / "vcpus" / "cpu.cfs_period_us").read_text() == "100000"
    assert read_cpu_quota(layout, server) == 50_000
    assert limited_threads(layout, server) == {4245}
    set_vcpu_quota(layout, server, 30_000)  # a live `set`
    assert read_cpu_quota(layout, server) == 30_000


def test_v1_group_of_an_older_daemon_loses_its_whole_process_quota(tmp_path: Path) -> None:
    """Before, the quota was on the server's group itself; adoption re-places the VM."""
    layout = v1_layout(tmp_path)
    server = str(uuid.uuid4())
    old = layout.group_of(server)
    old.mkdir(parents=True)
    (old / "cpu.cfs_quota_us").write_text("25000")
    place_vm_threads(layout, server, 4242, [4245], 25_000)
    assert (old / "cpu.cfs_quota_us").read_text() == "-1"
    assert read_cpu_quota(layout, server) == 25_000


def test_a_vm_without_vcpu_threads_is_refused(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    with pytest.raises(ValueError, match="no vCPU thread"):
        place_vm_threads(layout, str(uuid.uuid4()), 4242, [4242], 25_000)


def test_v2_vcpus_are_a_threaded_child_with_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory")
    layout = find_cpu_cgroup(tmp_path)
    assert layout == CgroupLayout(tmp_path, 2)
    server = str(uuid.uuid4())
    place_vm_threads(layout, server, 4242, [4245], 25_000)
    group = tmp_path / "openhosting" / server
    assert (group / "cgroup.procs").read_text() == "4242"
    assert (group / "cpu.max").read_text() == "max 100000"
    assert (group / "cgroup.subtree_control").read_text() == "+cpu"
    assert (group / "vcpus" / "cgroup.type").read_text() == "threaded"
    assert (group / "vcpus" / "cgroup.threads").read_text() == "4245"
    assert (group / "vcpus" / "cpu.max").read_text() == "25000 100000"
    assert read_cpu_quota(layout, server) == 25_000


def test_no_cpu_controller_means_no_layout(tmp_path: Path) -> None:
    assert find_cpu_cgroup(tmp_path) is None


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


# A process like QEMU: a main thread and two "vCPU" threads, all busy; it prints the vCPU
# threads' ids. They spin in hashing, which runs without the GIL (the lock would tie the
# threads together).
BUSY = """
import hashlib
import threading
data = bytes(1 << 20)
def spin():
    while True:
        hashlib.sha256(data).digest()
ids = []
ready = threading.Event()
def vcpu():
    ids.append(threading.get_native_id())
    if len(ids) == 2:
        ready.set()
    spin()
for _ in range(2):
    threading.Thread(target=vcpu, daemon=True).start()
ready.wait()
print(*ids, flush=True)
spin()
"""


def test_a_real_cgroup_holds_the_vcpu_threads_to_the_quota_and_leaves_the_main_thread_free() -> (
    None
):
    layout = find_cpu_cgroup()
    if layout is None:
        pytest.fail("this host has no cpu cgroup controller: cpu cannot be enforced")
    server = str(uuid.uuid4())
    busy = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None
        vcpus = [int(tid) for tid in busy.stdout.readline().split()]
        place_vm_threads(layout, server, busy.pid, vcpus, quota_us(400, 2000))  # 20 % of a core
        assert limited_threads(layout, server) == set(vcpus)
        assert busy.pid not in limited_threads(layout, server)
        group_tasks = (layout.group_of(server) / "tasks").read_text().split()
        assert str(busy.pid) in group_tasks
        # The main thread (QEMU's main loop and monitor) is in the unlimited parent. (Its
        # CPU time is not asserted: on a loaded 2-core host it depends on the neighbours.)
        limit = "cpu.max" if layout.version == 2 else "cpu.cfs_quota_us"
        assert (layout.group_of(server) / limit).read_text().split()[0] in ("-1", "max")
        start = sum(cpu_seconds(busy.pid, tid) for tid in vcpus)
        time.sleep(2.0)
        limited = sum(cpu_seconds(busy.pid, tid) for tid in vcpus) - start
        assert limited < 0.2 * 2.0 * 1.5, f"the vCPUs used {limited:.2f} s of CPU in 2 s"
    finally:
        busy.kill()
        busy.wait(timeout=10)
        if busy.stdout is not None:
            busy.stdout.close()
        time.sleep(0.1)
        remove_cpu_group(layout, server)
    assert not layout.group_of(server).exists()
