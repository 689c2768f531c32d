"""The daemon as the README starts it: `make run`, a user from the admin tool, curl."""

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.daemon_process import create_user, free_port, wait_listening
from tests.conftest import REPO

ADMIN = REPO / ".venv" / "bin" / "openhosting-admin"


class Daemon:
    """`make run` in a process group of its own, stopped with SIGTERM like an operator would."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir, self.port = state_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = state_dir.parent / f"daemon-{port}.log"
        args = f"--state-dir {state_dir} --listen 127.0.0.1:{port}"
        # The metrics listener on a free port too: its default (127.0.0.1:9180) may be taken
        # by a daemon of a test running beside this one.
        metrics = {"OH_API_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "run", f"ARGS={args}"],
                cwd=REPO,
                env={**os.environ, **metrics},
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_listening(port, self.process, timeout=60, log=self.log, interval=0.1)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> str:
        os.killpg(self.process.pid, signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return out.decode()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def test_readme_start_prints_exports_and_serves_a_user_made_with_the_admin_tool(
    state_dir: Path,
) -> None:
    daemon = Daemon(state_dir, free_port())
    try:
        bob = create_user(state_dir, "--name", "bob", admin=ADMIN, timeout=30)
        assert len(bob.secret) >= 22  # ≥ 128 bits in URL-safe base64
        good = curl("-u", bob.auth, f"{daemon.url}/nosuch/command")
        assert "X-Elastic-Error: missing" in good.stdout
        bad = curl("-u", f"{bob.user}:wrong", f"{daemon.url}/drives/list")
        assert " 401 " in bad.stdout.splitlines()[0]
        assert "X-Elastic-Error: auth" in bad.stdout
    finally:
        first_output = daemon.stop()
    exports = [line for line in first_output.splitlines() if line.startswith("export ")]
    assert exports[0] == f"export OHURI={daemon.url}/"
    assert exports[1].startswith("export OHAUTH=")
    log = daemon.log.read_text()
    assert "event=listening" in log and "event=stopped" in log
    assert bob.secret not in log
    first_user_secret = exports[1].split(":", 1)[1]
    assert first_user_secret not in log

    # A restart keeps every user and creates no other first user.
    daemon = Daemon(state_dir, free_port())
    try:
        first_uuid = exports[1].removeprefix("export OHAUTH=").split(":")[0]
        again = curl("-u", f"{first_uuid}:{first_user_secret}", f"{daemon.url}/nosuch/command")
        assert "X-Elastic-Error: missing" in again.stdout
    finally:
        assert "export" not in daemon.stop()


def _openhostingd(state_dir: Path, listen: str, metrics: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "openhostingd"), "--state-dir", str(state_dir),
         "--listen", listen],
        env={**os.environ, "OH_API_METRICS_LISTEN": metrics},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("taken", ["api", "metrics"])
def test_a_start_on_a_taken_port_prints_no_exports_and_makes_no_user(
    state_dir: Path, taken: str
) -> None:
    # Another platform on the machine holds the port: the newcomer's `make run` printed a
    # first user's export lines naming that other API, then failed; started again on a free
    # port, it printed none (the user existed), so only the wrong lines were ever shown.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = f"127.0.0.1:{holder.getsockname()[1]}"
    listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    try:
        failed = _openhostingd(state_dir, held if taken == "api" else listen,
                               held if taken == "metrics" else metrics)  # fmt: skip
        out, err = failed.communicate(timeout=60)
    finally:
        holder.close()
    assert failed.returncode == 1
    assert "export" not in out
    setting = "OH_API_LISTEN" if taken == "api" else "OH_API_METRICS_LISTEN"
    assert f"cannot listen on {held}" in err and setting in err
    users = subprocess.run(
        [ADMIN, "--state-dir", state_dir, "user", "list"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert users.stdout == ""

    daemon = _openhostingd(state_dir, listen, metrics)
    try:
        wait_listening(int(listen.rsplit(":", 1)[1]), daemon, timeout=60, interval=0.1)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        out, _ = daemon.communicate(timeout=30)
    assert f"export OHURI=http://{listen}/\nexport OHAUTH=" in out
