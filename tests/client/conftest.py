"""Fixtures of the client tool tests: a real `openhostingd` on a loopback port with a user, and
the tools run as subprocesses against it, as a user runs them."""

import hashlib
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openhosting.config import load_config
from testbed.daemon_process import BIN, DaemonProcess, create_user
from testbed.leftovers import kill_leftover_vms

TOOL_TIMEOUT = 60


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ApiDaemon:
    """`openhostingd` in a subprocess with its own state directory and one user; can be stopped
    and started again on the same port and state (to fail a transfer half-way)."""

    def __init__(self, work_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = work_dir / "state"
        account = create_user(self.state_dir)  # before the daemon: it makes the state directory
        self.user, self.secret = account.user, account.secret
        self.daemon = DaemonProcess(self.state_dir, work_dir / "daemon.log", env=env)
        self.url = self.daemon.url + "/"
        self.log = self.daemon.log

    def start(self) -> None:
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.stop()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a user of this daemon has: OHURI and OHAUTH set."""
        return {
            **os.environ,
            "OHURI": self.url,
            "OHAUTH": f"{self.user}:{self.secret}",
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **extra,
        }

    def run(
        self,
        tool: str,
        *args: str | Path,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a client tool to its end; output captured as bytes."""
        return subprocess.run(
            [str(BIN / tool), *map(str, args)],
            input=input, capture_output=True, env=env or self.env(), cwd=cwd,
            timeout=TOOL_TIMEOUT, check=False,
        )  # fmt: skip

    def check(self, tool: str, *args: str | Path, **options: object) -> str:
        """Run a client tool that must succeed; its standard output as text."""
        done = self.run(tool, *args, **options)  # type: ignore[arg-type]
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def create_drive(self, size: int, cipher: str | None = None) -> str:
        body = f"size {size}\n" + (f"encryption:cipher {cipher}\n" if cipher else "")
        out = self.check("openhosting", "-c", "drives", "create", input=body.encode())
        return next(line.split()[1] for line in out.splitlines() if line.startswith("drive "))

    def info(self, drive: str) -> dict[str, str]:
        out = self.check("openhosting", "drives", drive, "info")
        return dict(line.split(" ", 1) if " " in line else (line, "") for line in out.splitlines())


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    """One daemon for all the client tool tests."""
    daemon = ApiDaemon(tmp_path_factory.mktemp("tools-daemon"))
    try:
        yield daemon
    finally:
        daemon.stop()
        # The daemon leaves VMs running when it stops (by design): a test must not.
        run_path = load_config(overrides={"state_dir": str(daemon.state_dir)}).run_path
        kill_leftover_vms(run_path)


def run_in_terminal(
    argv: list[str], env: dict[str, str], answer: bytes | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as its controlling terminal and standard streams;
    type `answer` at the first prompt. Returns the exit status and everything shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the program, never return into pytest
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            shown += data
            if answer is not None and b": " in shown:
                os.write(fd, answer)
                answer = None
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown


@contextmanager
def loop_device(image: Path) -> Iterator[str]:
    """`image` as a block device (a loop device, detached afterwards); skips without one."""
    try:
        attached = subprocess.run(
            ["losetup", "--find", "--show", str(image)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("losetup is not installed")
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], timeout=30, check=True)


def wait_for_output(process: subprocess.Popen[bytes], needle: bytes, timeout: float = 30) -> bytes:
    """Read `process`'s standard output until it holds `needle`; what was read so far."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"no {needle!r} in {seen!r} within {timeout} s"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data = os.read(fd, 4096)
            assert data, f"output ended without {needle!r}: {seen!r}"
            seen += data
    return seen


# What starts a tool these tests Ctrl-C: a job a shell started in the background (a CI
# runner's, `make test &`) runs with SIGINT ignored, its children too, and Python then keeps
# ignoring it, so the tool would run to its end. coreutils' env resets it to the default, as a
# terminal's foreground job has it, then execs the tool (same process).
WITH_CTRL_C = ["env", "--default-signal=INT"]


def interrupt_mid_transfer(process: subprocess.Popen[bytes]) -> str:
    """Ctrl-C a transfer tool once four chunks are done; it must end with `E` and a non-zero
    status. Its standard error (which says how to resume)."""
    try:
        seen = wait_for_output(process, b"....")
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode != 0
    assert (seen + rest).endswith(b"E\n")
    return err.decode()
