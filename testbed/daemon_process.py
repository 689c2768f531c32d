"""A real `openhostingd` in a subprocess, for the tests and benchmarks that need the whole
daemon: a user made with `openhosting-admin`, a free loopback port, a start that returns once
the daemon listens, a stop that cannot hang, and a small text-mode HTTP client.

The one place that starts the daemon as a process (tests/test_daemon.py alone goes through
`make run`, as the README does, and uses the waiting and port helpers of this module). Only
the standard library and the package: `python -m bench` imports it too, without pytest.
"""

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from openhosting.wire.text import parse_properties
from testbed.leftovers import kill_leftover_vms

BIN = Path(sys.executable).parent
LISTEN_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# Daemons start in well under a second: look again often, so tests do not idle.
POLL_INTERVAL = 0.05


# Ports this process has handed out: the kernel may pick a port again as soon as its probe
# is closed, so two daemons started side by side were once given the same one (one's API
# port, the other's metrics port): the second failed to bind while the first answered.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at this moment (the kernel's pick), never one this
    process has handed out before."""
    with _HANDED_OUT_LOCK:
        for _ in range(100):  # bounded: the kernel's picks wander over thousands of ports
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise AssertionError("no loopback port left that this process has not handed out")


def wait_listening(
    port: int,
    process: subprocess.Popen[bytes],
    timeout: float = LISTEN_TIMEOUT,
    log: Path | None = None,
    interval: float = POLL_INTERVAL,
) -> None:
    """Return once 127.0.0.1:`port` accepts connections. AssertionError if `process` exits
    first (with the text of its `log`) or nothing listens within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace") if log is not None else ""
            raise AssertionError(f"exited with {process.returncode} before listening\n{output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(interval)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (its inode in
    /proc/net/tcp among the process's descriptors): an answer on a port proves nothing
    about whose it is."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in inodes:
                return True
        except FileNotFoundError:
            continue  # closed meanwhile
    return False


def stop_process(
    process: subprocess.Popen[bytes],
    signum: signal.Signals = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
) -> None:
    """End a process the caller started: `signum`, then SIGKILL if it is still there after
    `timeout` seconds. Nothing if it has already exited."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@dataclass(frozen=True)
class Account:
    """One user's credentials, as `openhosting-admin user create` prints them."""

    user: str
    secret: str

    @property
    def auth(self) -> str:
        """`UUID:SECRET`: what `curl -u` and OHAUTH take."""
        return f"{self.user}:{self.secret}"

    @property
    def auth_header(self) -> str:
        """The value of the Authorization header (Basic)."""
        return "Basic " + base64.b64encode(self.auth.encode()).decode()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.auth_header}


def create_user(
    state_dir: Path,
    *options: str,
    admin: Path = BIN / "openhosting-admin",
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> Account:
    """`openhosting-admin --state-dir DIR user create [OPTIONS]`, which makes the state
    directory if it is missing; whether or not a daemon runs on it. `env` is added to this
    process's environment (`OH_STORE_URL` for a daemon's database elsewhere)."""
    created = subprocess.run(
        [str(admin), "--state-dir", str(state_dir), "user", "create", *options],
        capture_output=True, text=True, timeout=timeout, check=True,
        env={**os.environ, **(env or {})},
    ).stdout  # fmt: skip
    fields = dict(line.split(" ", 1) for line in created.splitlines() if " " in line)
    return Account(fields["user"], fields["secret"])


class DaemonProcess:
    """`openhostingd --state-dir DIR --listen 127.0.0.1:PORT` with its output appended to
    `log`, started when made; it can be stopped and started again on the same port and state.

    `env` is added to this process's environment; `log_level` is set as OH_LOG_LEVEL unless
    None (tests that read events such as `event=listening` from the log want the default).
    The daemon runs in a session of its own: a terminal's Ctrl-C reaches only the test,
    whose clean-up stops it.
    """

    def __init__(
        self,
        state_dir: Path,
        log: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str | None = "warning",
    ) -> None:
        self.state_dir, self.log = state_dir, log
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        # The metrics listener too gets a free port: daemons of tests run side by side.
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        level = {} if log_level is None else {"OH_LOG_LEVEL": log_level}
        metrics = {"OH_API_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}"}
        self._env = {**level, **metrics, **(env or {})}
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [str(BIN / "openhostingd"), "--state-dir", str(self.state_dir),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=log, env={**os.environ, **self._env},
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_listening(self.port, process, log=self.log)
            # What answered may be another process that took the port first: then this
            # daemon fails to bind and exits (wait_listening's error, with its log).
            deadline = time.monotonic() + LISTEN_TIMEOUT
            while not listens_on(process.pid, self.port) and time.monotonic() < deadline:
                wait_listening(self.port, process, log=self.log)
                time.sleep(POLL_INTERVAL)
        except BaseException:
            stop_process(process)
            raise
        return process

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self) -> None:
        """Start it again (same port, state and log) after a stop."""
        assert not self.alive(), "the daemon is running already"
        self.process = self._spawn()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds: for clean-up."""
        stop_process(self.process, timeout=timeout)

    def end(self, signum: signal.Signals, timeout: float = 30) -> int:
        """Send `signum` (if it still runs) and wait for the exit, which must come within
        `timeout` seconds (TimeoutExpired): for tests in which how it ends is the point."""
        if self.alive():
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


@dataclass(frozen=True)
class Daemon(Account):
    """What :func:`running_daemon` yields: the credentials of the user made for the daemon,
    where it listens (`url` without a trailing slash) and its process."""

    url: str
    port: int
    state_dir: Path
    log: Path
    process: DaemonProcess


@contextmanager
def running_daemon(work_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[Daemon]:
    """A daemon on a loopback port with a new state directory `work_dir/state`, one user, and
    its log in `work_dir/daemon.log` (level warning); stopped afterwards. `env` reaches both
    the admin tool that makes the user and the daemon (`OH_STORE_URL`: their database).

    Unless `env` or this process's environment names one (OH_HYPERVISOR_RUN_DIR), the daemon
    gets a run directory of its own, whose VMs are killed and which is removed afterwards:
    the default, under /run/openhosting, would outlive it."""
    run_dir = None
    if "OH_HYPERVISOR_RUN_DIR" not in {**os.environ, **(env or {})}:
        run_dir = Path(tempfile.mkdtemp(prefix="ohd-", dir="/tmp"))  # short: unix sockets
        run_dir.chmod(0o755)  # QEMU may run as another user
        env = {**(env or {}), "OH_HYPERVISOR_RUN_DIR": str(run_dir)}
    try:
        account = create_user(work_dir / "state", env=env)
        process = DaemonProcess(work_dir / "state", work_dir / "daemon.log", env=env)
        try:
            yield Daemon(
                account.user, account.secret, process.url, process.port, process.state_dir,
                process.log, process,
            )  # fmt: skip
        finally:
            process.stop()
    finally:
        if run_dir is not None:
            kill_leftover_vms(run_dir)


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Api:
    """Requests to a daemon as the shell tools make them: text bodies, the Basic auth of one
    account, a fresh connection each, a time limit. The words (drives, servers) are the
    caller's: tests subclass it with their own."""

    def __init__(self, account: Account, url: str = "", timeout: float = 30) -> None:
        self.account, self.timeout = account, timeout
        # `http://127.0.0.1:PORT`; a test that restarts the daemon elsewhere moves it.
        self.url = url

    def call(
        self,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        method: str | None = None,
    ) -> Answer:
        """One request: a GET without a body, a POST with one, unless `method` says."""
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=self.timeout
        )
        try:
            connection.request(
                method or ("GET" if body is None else "POST"),
                path,
                body,
                {**self.account.headers, **(headers or {})},
            )
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def properties(self, path: str, body: bytes | None = None) -> dict[str, str]:
        """The `KEY VALUE` answer of a request that must succeed (200)."""
        status, _, answer = self.call(path, body)
        assert status == 200, f"{path}: {status} {answer!r}"
        return parse_properties(answer.decode())

    def wait_properties(
        self, path: str, until: Callable[[dict[str, str]], bool], timeout: float = 30
    ) -> dict[str, str]:
        """GET `path` again and again until its properties satisfy `until`; those."""
        deadline = time.monotonic() + timeout
        while not until(properties := self.properties(path)):
            assert time.monotonic() < deadline, properties
            time.sleep(POLL_INTERVAL)
        return properties
