"""A real `openhostingd` for the drive data-path tests (started by testbed/daemon_process.py) in
a temporary directory removed afterwards, with drive requests and its memory figures from /proc.
"""

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from testbed import daemon_process
from testbed.daemon_process import Answer, Api

REQUEST_TIMEOUT = 120


class DriveDaemon(Api):
    """One running daemon and its user; see :func:`running_daemon`."""

    def __init__(self, daemon: daemon_process.Daemon) -> None:
        super().__init__(daemon, daemon.url, REQUEST_TIMEOUT)
        self.process = daemon.process
        self.port, self.log, self.auth_header = daemon.port, daemon.log, daemon.auth_header

    def request(
        self,
        path: str,
        body: bytes | Iterable[bytes] = b"",
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> Answer:
        """One request on a fresh connection, a POST unless told: (status, headers, body)."""
        return self.call(path, body, headers, method)

    def create_drive(self, size: int, cipher: str, **keys: str) -> str:
        body = f"name test\nsize {size}\nencryption:cipher {cipher}\n" + "".join(
            f"{key.replace('_', ':')} {value}\n" for key, value in keys.items()
        )
        return self.properties("/drives/create", body.encode())["drive"]

    def info(self, drive: str) -> dict[str, str]:
        return self.properties(f"/drives/{drive}/info")

    def memory_kb(self, field: str) -> int:
        """A figure of the daemon's /proc/PID/status in kB (VmHWM, VmRSS)."""
        status = Path(f"/proc/{self.process.pid}/status")
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in {status}")

    def reset_peak_memory(self) -> None:
        """Set VmHWM back to the current RSS (Linux: clear_refs 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def alive(self) -> bool:
        return self.process.alive()


@contextmanager
def running_daemon(env: Mapping[str, str] | None = None) -> Iterator[DriveDaemon]:
    """A daemon on a loopback port with a state directory of its own, removed afterwards
    (drive files of gigabytes must not stay behind in pytest's kept temporary folders)."""
    work_dir = Path(tempfile.mkdtemp(prefix="oh-drive-daemon-"))
    try:
        with daemon_process.running_daemon(work_dir, env) as daemon:
            yield DriveDaemon(daemon)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
