"""A real daemon stopped (SIGTERM: `systemctl restart`) while a drive write's body is still
arriving: the write answers 503 `failed` at once, not a 400 "stalled" after the idle timeout,
and the daemon's stop is not held that long; a gzip body leaves the drive as it was. A drive
read to a slow client holds the stop for STOP_DRAIN_SECONDS at most, then ends short of its
Content-Length, well within the unit's TimeoutStopSec."""

import gzip
import http.client
import os
import signal
import time
from pathlib import Path

import pytest

from openhosting.daemon import STOP_DRAIN_SECONDS
from testbed.daemon_process import Api, DaemonProcess, create_user

MIB = 1 << 20
SIZE = 16 * MIB
TIMEOUT = 60
# Far less than the idle timeout (30 s), which the write waited for before.
PROMPT = 10.0


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_a_write_under_way_at_the_stop_is_503_at_once(tmp_path: Path, encoding: str) -> None:
    state = tmp_path / "state"
    api = Api(create_user(state, timeout=TIMEOUT))
    daemon = DaemonProcess(state, tmp_path / "daemon.log")
    try:
        api.url = daemon.url
        drive = api.properties("/drives/create", f"size {SIZE}\nencryption:cipher none\n".encode())[
            "drive"
        ]
        old = os.urandom(SIZE)
        assert api.call(f"/drives/{drive}/write", old).status == 204
        data = os.urandom(SIZE)
        body = gzip.compress(data, compresslevel=1) if encoding == "gzip" else data
        headers = {**api.account.headers, "Content-Length": str(len(body))}
        if encoding == "gzip":
            headers["Content-Encoding"] = "gzip"

        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=TIMEOUT)
        try:
            connection.putrequest("POST", f"/drives/{drive}/write")
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            connection.send(body[: len(body) // 2])  # the rest never comes before the stop
            time.sleep(0.5)  # the daemon has read what came

            stopped_at = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            response = connection.getresponse()
            answered_in = time.monotonic() - stopped_at
            text = response.read().decode()
        finally:
            connection.close()
        assert (response.status, response.getheader("X-Elastic-Error")) == (503, "failed"), text
        assert "stopping" in text and answered_in < PROMPT
        assert daemon.process.wait(timeout=PROMPT) == 0
        assert time.monotonic() - stopped_at < PROMPT
        # aiohttp's lingering read of the rest of the body after the answer met the ended
        # body too: it closes the connection, with no "Unhandled exception" in the log.
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log and "Unhandled exception" not in log, log

        daemon.start()
        read = api.call(f"/drives/{drive}/read")
        assert read.status == 200
        if encoding == "gzip":
            assert read.body == old  # nothing of an unfinished gzip body reaches the drive
        else:  # a raw body's prefix is written (docs/drive-writes.md), the rest as it was
            assert read.body[len(body) // 2 :] == old[len(body) // 2 :]
    finally:
        daemon.stop()


def test_a_slow_download_holds_the_stop_for_the_drain_time_at_most(tmp_path: Path) -> None:
    state = tmp_path / "state"
    api = Api(create_user(state, timeout=TIMEOUT))
    daemon = DaemonProcess(state, tmp_path / "daemon.log")
    size = 256 * MIB  # about 3 minutes at this client's pace
    try:
        api.url = daemon.url
        drive = api.properties("/drives/create", f"size {size}\nencryption:cipher none\n".encode())[
            "drive"
        ]
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=TIMEOUT)
        try:
            connection.request("GET", f"/drives/{drive}/read", headers=api.account.headers)
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Content-Length") == str(size)
            response.read(MIB)
            stopped_at = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            received = MIB
            with pytest.raises(http.client.IncompleteRead):  # never a body silently short
                while daemon.alive() and time.monotonic() - stopped_at < 2 * TIMEOUT:
                    chunk = response.read(64 * 1024)
                    received += len(chunk)
                    if not chunk:
                        break
                    time.sleep(0.05)
                response.read()
        finally:
            connection.close()
        assert received < size
        assert daemon.process.wait(timeout=TIMEOUT) == 0
        # Twice the drain at most (the handlers, then their cancellation), far from 60 s.
        assert time.monotonic() - stopped_at < 2 * STOP_DRAIN_SECONDS + 5
    finally:
        daemon.stop()
