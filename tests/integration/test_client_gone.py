"""A client that goes away in the middle of a long read, against a real `openhostingd`: no
fault of ours, so one info line (`event=client_gone`) and status 499 in the access log, never
an internal error with a traceback or a 500."""

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.integration.drive_daemon import DriveDaemon, running_daemon

DRIVE_SIZE = 256 << 20  # far more than the socket buffers hold: the read is cut mid-way


@pytest.fixture(scope="module")
def daemon() -> Iterator[DriveDaemon]:
    with running_daemon({"OH_LOG_LEVEL": "info"}) as running:
        yield running


def leave_mid_read(daemon: DriveDaemon, drive: str, how: str) -> None:
    """Ask for the whole drive, take 100 kB of it, and go: with a FIN (`close`, data left
    unread) or a RST (`reset`)."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(
            f"GET /drives/{drive}/read HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {daemon.auth_header}\r\n\r\n".encode()
        )
        received = b""
        while len(received) < 100_000:
            piece = sock.recv(65536)
            assert piece, received[:200]
            received += piece
        assert received.startswith(b"HTTP/1.1 200")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def wait_for_log_lines(daemon: DriveDaemon, start: int, text: str, timeout: float) -> list[str]:
    """The daemon's log lines after byte `start`, once one holds `text` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = daemon.log.read_bytes()[start:].decode(errors="replace").splitlines()
        if any(text in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_leaving_mid_read_is_logged_as_gone_not_as_an_error(
    daemon: DriveDaemon, cipher: str, how: str
) -> None:
    drive = daemon.create_drive(DRIVE_SIZE, cipher)
    assert daemon.request(f"/drives/{drive}/write", b"x" * 65536).status == 204
    start = daemon.log.stat().st_size

    leave_mid_read(daemon, drive, how)

    lines = wait_for_log_lines(daemon, start, "event=client_gone", timeout=30)
    assert [line for line in lines if "event=client_gone" in line and drive in line], lines
    assert not [line for line in lines if "internal_error" in line or "Traceback" in line]
    assert not [line for line in lines if " ERROR " in line], lines
    reads = [line for line in lines if "event=request" in line and "/read" in line]
    assert reads and all("status=499" in line for line in reads), reads
    assert daemon.info(drive)["drive"] == drive  # and the daemon still answers


def test_a_client_leaving_mid_hash_stops_the_hash(daemon: DriveDaemon) -> None:
    # The daemon's server does not cancel a handler whose client leaves (the test server of
    # tests/api does), and a hash sends nothing before its end: an abandoned hash of 1 TiB of
    # zeros went on for some 20 minutes, holding a transfer and the drive against a shrink.
    drive = daemon.create_drive(1 << 40, "none")
    start = daemon.log.stat().st_size
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(
            f"GET /drives/{drive}/hash HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {daemon.auth_header}\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 10
        while daemon.request(f"/drives/{drive}/set", b"size 1M").status != 409:
            assert time.monotonic() < deadline, "the hash never started"
            time.sleep(0.05)
    deadline = time.monotonic() + 10  # polled every 0.5 s; its thread stops at its next piece
    while (answer := daemon.request(f"/drives/{drive}/set", b"size 1M")).status == 409:
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    assert answer.status == 200, answer
    lines = wait_for_log_lines(daemon, start, "event=client_gone", timeout=5)
    assert [line for line in lines if "event=client_gone" in line and "/hash" in line], lines
    assert not [line for line in lines if "internal_error" in line or " ERROR " in line], lines
