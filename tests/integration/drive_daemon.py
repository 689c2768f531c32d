"""A real `openhostingd` subprocess for the drive data-path tests, with a user, its memory
figures from /proc, and small HTTP helpers that speak to it like any client."""

import base64
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from openhosting.wire.text import parse_properties
from tests.test_daemon import free_port

BIN = Path(sys.executable).parent
REQUEST_TIMEOUT = 120


class DriveDaemon:
    """One running daemon; see :func:`running_daemon`."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, user: str, secret: str, log: Path
    ) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    def request(
        self,
        path: str,
        body: bytes | Iterable[bytes] = b"",
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request(method, path, body, {**self.auth, **(headers or {})})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def create_drive(self, size: int, cipher: str, **keys: str) -> str:
        body = f"name test\nsize {size}\nencryption:cipher {cipher}\n" + "".join(
            f"{key.replace('_', ':')} {value}\n" for key, value in keys.items()
        )
        status, _, answer = self.request("/drives/create", body.encode())
        assert status == 200, answer
        return parse_properties(answer.decode())["drive"]

    def info(self, drive: str) -> dict[str, str]:
        status, _, answer = self.request(f"/drives/{drive}/info", method="GET")
        assert status == 200, answer
        return parse_properties(answer.decode())

    def memory_kb(self, field: str) -> int:
        """A figure of the daemon's /proc/PID/status in kB (VmHWM, VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def reset_peak_memory(self) -> None:
        """Set VmHWM back to the current RSS (Linux: clear_refs 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("openhostingd did not listen within 30 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def running_daemon(env: dict[str, str] | None = None) -> Iterator[DriveDaemon]:
    """A daemon on a loopback port with a state directory of its own, removed afterwards
    (drive files of gigabytes must not stay behind in pytest's kept temporary folders)."""
    work_dir = Path(tempfile.mkdtemp(prefix="oh-drive-daemon-"))
    try:
        state_dir = work_dir / "state"
        created = subprocess.run(
            [str(BIN / "openhosting-admin"), "--state-dir", str(state_dir), "user", "create"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        fields = dict(line.split(" ", 1) for line in created.stdout.splitlines() if " " in line)
        port = free_port()
        log = work_dir / "daemon.log"
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(BIN / "openhostingd"), "--state-dir", str(state_dir),
                 "--listen", f"127.0.0.1:{port}"],
                stdout=log_file, stderr=log_file,
                env={**os.environ, "OH_LOG_LEVEL": "warning", **(env or {})},
            )  # fmt: skip
        try:
            _wait_listening(process, port, log)
            yield DriveDaemon(process, port, fields["user"], fields["secret"], log)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
