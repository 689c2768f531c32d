"""A daemon killed (SIGKILL) in the middle of an imaging job: the next daemon finishes the
job, and no drive is left showing `imaging`."""

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_daemon import free_port

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
# Slow enough that the job is surely under way when the daemon is killed.
RATE = 4 * MiB
TIMEOUT = 30


class Daemon:
    """`openhostingd` in a process group of its own, logging to a file."""

    def __init__(self, state_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OH_STORAGE_IMAGING_MAX_RATE": str(RATE), "OH_FIRST_USER": "0"}
        with log.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(BIN / "openhostingd"), "--state-dir", str(state_dir),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log_file, stderr=log_file, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(self.url, timeout=1)
            except urllib.error.HTTPError:
                return  # answering (401): ready
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the daemon did not start listening")

    def end(self, signum: signal.Signals) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
        self.process.wait(timeout=TIMEOUT)


class Api:
    def __init__(self, user: str, secret: str) -> None:
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.url = ""

    def call(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, data=body, headers=self.headers, method="POST" if body else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def info(self, drive: str) -> dict[str, str]:
        status, body = self.call(f"/drives/{drive}/info")
        assert status == 200, body
        return dict(line.split(" ", 1) for line in body.decode().splitlines() if " " in line)

    def create(self, body: str) -> str:
        status, answer = self.call("/drives/create", body.encode())
        assert status == 200, answer
        return answer.decode().split("drive ", 1)[1].split()[0]

    def wait_info(self, drive: str, until: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        deadline = time.monotonic() + TIMEOUT
        while not until(info := self.info(drive)):
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        return info


def well_under_way(info: dict[str, str]) -> bool:
    progress = info.get("imaging", "")
    return progress.endswith("%") and int(progress[:-1]) >= 10


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.end(signal.SIGKILL)


def test_a_job_cut_by_sigkill_finishes_after_restart_and_leaves_no_imaging(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    created = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "user", "create"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    fields = dict(line.split(" ", 1) for line in created.splitlines() if " " in line)
    api = Api(fields["user"], fields["secret"])
    daemons.append(Daemon(state, log))
    api.url = daemons[-1].url

    data = os.urandom(8 * MiB - 1234)
    src = api.create(f"size {8 * MiB}\n")
    assert api.call(f"/drives/{src}/write", data)[0] == 204
    dst = api.create(f"size {9 * MiB}\nencryption:cipher none\n")  # random data grows
    status, body = api.call(f"/drives/{dst}/image/{src}/gzip", b" ")
    assert status == 204, body
    api.wait_info(dst, well_under_way)

    daemons[-1].end(signal.SIGKILL)
    daemons.append(Daemon(state, log))
    api.url = daemons[-1].url
    done = api.wait_info(dst, lambda info: "imaging" not in info)
    assert "imaging:error" not in done and "claimed" not in done
    assert "claimed" not in api.info(src)
    packed = api.call(f"/drives/{dst}/read")[1]
    assert zlib.decompressobj(wbits=31).decompress(packed) == data + bytes(1234)
    text = log.read_text()
    assert "event=imaging_restarted" in text and "event=imaging_done" in text
    jobs = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "jobs", "list"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    assert "state done" in jobs
