"""Whatever a test or benchmark left running under its run directory, killed and removed."""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from openhosting import pidwait
from openhosting.hypervisor import process
from openhosting.hypervisor.nbd_exports import EXPORTS_DIRECTORY, PIDFILE, export_pid
from openhosting.network import passt
from openhosting.network.guest_fence import table_name
from openhosting.network.passt_counters import PasstCounters


def kill_leftover_vms(run_path: Path) -> None:
    """Kill every VM, NBD export and user-mode network helper a test left running under `run_path`,
    take down its platform's guest fence, then remove the run files."""
    for run_dir in run_path.glob("*") if run_path.exists() else []:
        pid = process.adopt(run_dir, run_dir.name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    # The NBD exports of an agent's drives (one qemu-storage-daemon each).
    for pidfile in (run_path / EXPORTS_DIRECTORY).glob(f"*/*/{PIDFILE}"):
        if (pid := export_pid(pidfile)) is not None:
            os.kill(pid, signal.SIGKILL)
    passt_dir = run_path / "network" / "passt"
    counting = PasstCounters(passt_dir)
    for files in passt.running_files(passt_dir) if passt_dir.exists() else []:
        if (pid := passt.adopt(files)) is not None:
            os.kill(pid, signal.SIGKILL)
            # Its cgroup empties once it has exited. A zombie has: passt daemonizes, so it waits
            # for PID 1 to reap it, which takes up to 2 s where PID 1 reaps on a timer.
            deadline = time.monotonic() + 5
            while not pidwait.exited(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if counting.available:  # the NIC's counting table and cgroup
            nic_table = ["nft", "delete", "table", "inet", counting.table_of(files)]
            subprocess.run(nic_table, check=False, capture_output=True, timeout=10)
            with contextlib.suppress(OSError):
                counting.group_of(files).rmdir()
                counting.group_of(files).parent.rmdir()  # unless other NICs' are in it
    if os.geteuid() == 0:
        table = ["nft", "delete", "table", "inet", table_name(passt_dir)]
        subprocess.run(table, check=False, capture_output=True, timeout=10)
    shutil.rmtree(run_path, ignore_errors=True)


@contextlib.contextmanager
def vm_run_directory(prefix: str) -> Iterator[Path]:
    """A new run directory for VMs, short (under /tmp: unix socket paths must stay under 108
    bytes) and open to QEMU whatever user it runs as (hypervisor.run_as); at the end whatever
    ran under it is killed and it is removed (`kill_leftover_vms`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        kill_leftover_vms(path)
