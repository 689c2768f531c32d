"""A daemon killed (SIGKILL) in the middle of an imaging job: the next daemon finishes the
job, and no drive is left showing `imaging`."""

import gzip
import os
import signal
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.daemon_process import BIN, Api, DaemonProcess, create_user

MiB = 1024 * 1024
# Slow enough that the job is surely under way when the daemon is killed.
RATE = 4 * MiB
TIMEOUT = 30


class DriveApi(Api):
    """The requests of this test, in its words."""

    def info(self, drive: str) -> dict[str, str]:
        return self.properties(f"/drives/{drive}/info")

    def create(self, body: str) -> str:
        return self.properties("/drives/create", body.encode())["drive"]

    def wait_info(self, drive: str, until: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        return self.wait_properties(f"/drives/{drive}/info", until, TIMEOUT)


def start_daemon(state: Path, log: Path) -> DaemonProcess:
    """A daemon with the imaging rate limited; its log at the default level, read for events."""
    env = {"OH_STORAGE_IMAGING_MAX_RATE": str(RATE), "OH_FIRST_USER": "0"}
    return DaemonProcess(state, log, env=env, log_level=None)


def well_under_way(info: dict[str, str]) -> bool:
    progress = info.get("imaging", "")
    return progress.endswith("%") and int(progress[:-1]) >= 10


@pytest.mark.parametrize("conversion", ["gzip", "gunzip"])
def test_a_job_cut_by_sigkill_finishes_after_restart_and_leaves_no_imaging(
    tmp_path: Path, daemons: list[DaemonProcess], conversion: str
) -> None:
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    api = DriveApi(create_user(state, timeout=TIMEOUT))
    daemons.append(start_daemon(state, log))
    api.url = daemons[-1].url

    if conversion == "gzip":
        data = os.urandom(8 * MiB - 1234)
        stored, src_size, dst_size = data, 8 * MiB, 9 * MiB  # random data grows
    else:  # more than one 8 MiB chunk of output: the job is paced between two
        data = os.urandom(12 * MiB - 1234)
        stored = gzip.compress(data, compresslevel=1)
        src_size = dst_size = 13 * MiB
    src = api.create(f"size {src_size}\n")
    assert api.call(f"/drives/{src}/write", stored)[0] == 204
    dst = api.create(f"size {dst_size}\nencryption:cipher none\n")
    status, _, body = api.call(f"/drives/{dst}/image/{src}/{conversion}", b" ")
    assert status == 204, body
    api.wait_info(dst, well_under_way)

    daemons[-1].end(signal.SIGKILL)
    daemons.append(start_daemon(state, log))
    api.url = daemons[-1].url
    done = api.wait_info(dst, lambda info: "imaging" not in info)
    assert "imaging:error" not in done and "claimed" not in done
    assert "claimed" not in api.info(src)
    written = api.call(f"/drives/{dst}/read").body
    if conversion == "gzip":
        assert zlib.decompressobj(wbits=31).decompress(written) == data + bytes(1234)
    else:
        assert written == data + bytes(dst_size - len(data))
    text = log.read_text()
    assert "event=imaging_restarted" in text and "event=imaging_done" in text
    jobs = subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), "jobs", "list"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    assert "state done" in jobs
