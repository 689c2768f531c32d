"""The drive data path of a real `openhostingd`: gigabytes stream through in flat memory, and a
write whose client goes away half-way is neither acknowledged nor counted (docs/api.md §4)."""

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.integration.drive_daemon import DriveDaemon, running_daemon

MIB = 1 << 20
GIB = 1 << 30
# The bound on the daemon's peak resident memory while it streams a drive.
PEAK_LIMIT_KB = 200_000


@pytest.fixture
def daemon() -> Iterator[DriveDaemon]:
    with running_daemon() as running:
        yield running


class Pattern:
    """Deterministic random-looking bytes made on the fly, 1 MiB block by block, so that a
    test can stream gigabytes without a file and still know every byte it sent."""

    def __init__(self, seed: int) -> None:
        self._base = np.frombuffer(np.random.default_rng(seed).bytes(MIB), dtype=np.uint64)

    def block(self, index: int) -> bytes:
        return (self._base ^ np.uint64(index * 0x9E3779B97F4A7C15 % 2**64)).tobytes()

    def blocks(self, size: int) -> Iterator[bytes]:
        for index in range(size // MIB):
            yield self.block(index)

    def at(self, offset: int, length: int) -> bytes:
        first, last = offset // MIB, (offset + length - 1) // MIB
        joined = b"".join(self.block(index) for index in range(first, last + 1))
        start = offset - first * MIB
        return joined[start : start + length]


def curl_read_to_null(daemon: DriveDaemon, drive: str) -> tuple[str, int]:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "300", "-o", "/dev/null", "-X", "POST",
         "-H", f"Authorization: {daemon.auth_header}",
         "-w", "%{http_code} %{size_download}", f"{daemon.url}/drives/{drive}/read"],
        capture_output=True, text=True, timeout=330, check=True,
    )  # fmt: skip
    status, count = result.stdout.split()
    return status, int(count)


@pytest.mark.parametrize(
    ("cipher", "size"), [("none", 2 * GIB), ("aes-xts-plain", 2 * GIB)], ids=["plain", "encrypted"]
)
def test_streaming_two_gib_in_and_out_keeps_the_daemon_under_200_mb(
    daemon: DriveDaemon, cipher: str, size: int
) -> None:
    drive = daemon.create_drive(size, cipher)
    pattern = Pattern(seed=size)

    daemon.reset_peak_memory()
    status, _, answer = daemon.request(
        f"/drives/{drive}/write",
        pattern.blocks(size),  # streamed by http.client, never held whole
        {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )
    assert status == 204, answer
    write_peak = daemon.memory_kb("VmHWM")

    daemon.reset_peak_memory()
    assert curl_read_to_null(daemon, drive) == ("200", size)
    read_peak = daemon.memory_kb("VmHWM")

    assert write_peak < PEAK_LIMIT_KB, f"peak {write_peak} kB while writing {size} bytes"
    assert read_peak < PEAK_LIMIT_KB, f"peak {read_peak} kB while reading {size} bytes"
    # What was streamed is what is stored: the first bytes, across a block edge, the last.
    for offset in (0, size // 2 - 700, size - 1000):
        status, _, got = daemon.request(f"/drives/{drive}/read/{offset}/1400")
        assert status == 200
        assert got == pattern.at(offset, min(1400, size - offset))
    info = daemon.info(drive)
    assert (info["write:bytes"], info["write:requests"]) == (str(size), "1")


def _write_head(daemon: DriveDaemon, drive: str, declared: int) -> bytes:
    return (
        f"POST /drives/{drive}/write HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {daemon.auth_header}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()


def _send_half_a_write(daemon: DriveDaemon, drive: str, declared: int, half_close: bool) -> bytes:
    """Declare `declared` bytes, send half of them, then go away; returns what the daemon
    answered before the connection ended (nothing, when the socket is simply closed)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(_write_head(daemon, drive, declared) + Pattern(seed=7).at(0, declared // 2))
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            while piece := sock.recv(65536):
                answer += piece
    return answer


def _wait_until_not_being_written(daemon: DriveDaemon, drive: str, new_size: int) -> None:
    """Shrinking is refused (409) while a write is under way: retry until the daemon has
    given up on the cut-off request, for at most 20 s."""
    deadline = time.monotonic() + 20
    while True:
        status, _, answer = daemon.request(f"/drives/{drive}/set", f"size {new_size}".encode())
        if status == 200:
            return
        assert status == 409 and time.monotonic() < deadline, answer
        time.sleep(0.1)


@pytest.mark.parametrize("half_close", [False, True], ids=["closed", "half-closed"])
def test_a_write_cut_off_half_way_is_not_acknowledged_counted_or_left_busy(
    daemon: DriveDaemon, half_close: bool
) -> None:
    drive = daemon.create_drive(16 * MIB, "none")
    # 8 MiB arrive: enough for the daemon to have flushed some of it to the file already.
    answer = _send_half_a_write(daemon, drive, 16 * MIB, half_close)
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]

    _wait_until_not_being_written(daemon, drive, 8 * MIB)
    info = daemon.info(drive)
    assert (info["write:requests"], info["write:bytes"]) == ("0", "0")

    # The daemon is healthy: the next write on the same drive is acknowledged and lands.
    data = Pattern(seed=8).at(0, 8 * MIB)
    status, _, answer = daemon.request(f"/drives/{drive}/write", data)
    assert status == 204, answer
    status, _, got = daemon.request(f"/drives/{drive}/read")
    assert (status, got == data) == (200, True)
    assert daemon.info(drive)["write:requests"] == "1"
    assert daemon.alive()
    log = daemon.log.read_text()
    assert "internal_error" not in log, log


def test_a_write_that_stalls_half_way_is_refused_after_the_idle_timeout() -> None:
    with running_daemon({"OH_API_IDLE_TIMEOUT": "2"}) as daemon:
        drive = daemon.create_drive(4 * MIB, "none")
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
            sock.sendall(_write_head(daemon, drive, 4 * MIB) + bytes(MIB))
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
                answer += piece
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"X-Elastic-Error: usage" in answer
        assert 1.5 < waited < 20
        info = daemon.info(drive)
        assert (info["write:requests"], info["write:bytes"]) == ("0", "0")


def _answer_head(sock: socket.socket) -> tuple[int, bytes]:
    """Read an answer's head from `sock`: its Content-Length and the body bytes that came
    with it."""
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(65536)
        assert piece, head[:200]
        head += piece
    head, _, body = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    (length,) = [
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]  # fmt: skip
    return length, body


def _read_body(sock: socket.socket, length: int, body: bytes) -> bytes:
    """The rest of a body of `length` bytes of which `body` came already, as its SHA-256."""
    digest, received = hashlib.sha256(body), len(body)
    while received < length:
        piece = sock.recv(min(65536, length - received))
        assert piece, f"cut after {received} of {length} bytes"
        digest.update(piece)
        received += len(piece)
    return digest.digest()


def test_an_encrypted_read_to_a_stalled_then_slow_client_holds_little_memory_and_is_exact(
    daemon: DriveDaemon,
) -> None:
    size = 96 * MIB
    drive = daemon.create_drive(size, "aes-xts-plain")
    pattern = Pattern(seed=3)
    status, _, answer = daemon.request(
        f"/drives/{drive}/write", pattern.blocks(size), {"Content-Length": str(size)}
    )
    assert status == 204, answer
    expected = hashlib.sha256()
    for block in pattern.blocks(size):
        expected.update(block)

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        # A small receive buffer: the daemon's sends are often partial, its drains many.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        request = (
            f"GET /drives/{drive}/read HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {daemon.auth_header}\r\n\r\n"
        ).encode()
        before = daemon.memory_kb("VmRSS")
        sock.sendall(request)
        length, body = _answer_head(sock)
        time.sleep(2)  # the client stops reading: the daemon must not read the drive on
        stalled = daemon.memory_kb("VmRSS") - before
        assert (length, _read_body(sock, length, body)) == (size, expected.digest())
        # The connection serves its next request as usual.
        sock.sendall(request.replace(b"/read ", b"/read/1000/24 "))
        length, body = _answer_head(sock)
        assert _read_body(sock, length, body) == hashlib.sha256(pattern.at(1000, 24)).digest()

    # A few pieces ahead and the socket's buffers, never the 96 MiB of the drive.
    assert stalled < 40_000, f"{stalled} kB more while the client read nothing"
    assert "internal_error" not in daemon.log.read_text()
