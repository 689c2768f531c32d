"""The client tools facing a server that misbehaves on purpose (a test server of their own on
127.0.0.1): redirects, endless answers and drive infos with impossible sizes end in one clear
message and a failure, never a success, a traceback or memory without bound."""

import http.server
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from tests.api.tmpfs_helpers import small_tmpfs
from tests.client.conftest import BIN, TOOL_TIMEOUT

DRIVE = "00000000-0000-4000-8000-000000000000"
CHUNK = 65536

# What the server does for a request: given the handler, it sends the whole answer.
Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


def send(
    handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers: str
) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def drive_info(size: str) -> Answer:
    return lambda handler: send(handler, 200, f"drive {DRIVE}\nsize {size}\n".encode())


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Answers each request with the first of `answers` whose key (METHOD and a piece of the
    path) matches; every request seen is kept in `seen` (both set by `hostile_server`)."""

    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, Answer]]
    seen: ClassVar[list[str]]

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = f"{self.command} {self.path}"
        type(self).seen.append(request)
        for key, answer in self.answers.items():
            method, _, piece = key.partition(" ")
            if self.command == method and piece in self.path:
                answer(self)
                return
        send(self, 404, b"Not found\n", X_Elastic_Error="missing")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Hostile:
    """A server of `hostile_server`: its port and the requests it saw."""

    port: int
    seen: list[str]
    scheme: str = "http"

    def run(
        self, tool: str, *args: str | Path, timeout: float = TOOL_TIMEOUT, **env_extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a client tool against this server, as a user with OHURI naming it."""
        env = {
            **os.environ,
            "OHURI": f"{self.scheme}://127.0.0.1:{self.port}/",
            "OHAUTH": "u:s3cret",
            "OH_TIMEOUT": "10",
            **env_extra,
        }
        return subprocess.run(
            [str(BIN / tool), *map(str, args)],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )  # fmt: skip


@contextmanager
def hostile_server(
    answers: dict[str, Answer], tls: ssl.SSLContext | None = None
) -> Iterator[Hostile]:
    """A server on a free loopback port answering as `answers` says (over `tls` if given)."""
    handler = type("Handler", (_Hostile,), {"answers": answers, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        # Each connection's handshake in its own thread (at the first read), not in accept.
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Hostile(server.server_address[1], handler.seen, "http" if tls is None else "https")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_redirected_chunk_write_fails_the_upload_and_is_not_followed(tmp_path: Path) -> None:
    # The elsewhere server must never be asked: a followed redirect could take the credentials
    # there. Before: the 301 counted as written, and the upload said "completed", status 0.
    with hostile_server({"GET /info": drive_info(str(2 * CHUNK))}) as elsewhere:
        with hostile_server({
            "GET /info": drive_info(str(2 * CHUNK)),
            "POST /write/": lambda handler: send(
                handler, 301, b"", Location=f"http://127.0.0.1:{elsewhere.port}/drives/{DRIVE}/write/0"
            ),
        }) as server:  # fmt: skip
            image = tmp_path / "image"
            image.write_bytes(os.urandom(2 * CHUNK))
            done = server.run("openhosting-upload", "-d", DRIVE, "-c", str(CHUNK), "-p", "1", image)
        assert elsewhere.seen == []
    assert done.returncode == 1, done
    assert done.stdout.endswith("E\n") and "completed" not in done.stdout
    assert (
        "HTTP 301" in done.stderr
        and f"redirects to 'http://127.0.0.1:{elsewhere.port}/" in done.stderr
    )
    assert f"Restart with '-d {DRIVE} -o 0' to resume the upload" in done.stderr


def test_a_redirect_is_a_failure_of_the_generic_tool() -> None:
    # Before: the empty body of the 302 printed, status 0, as if the call had worked.
    with hostile_server(
        {"POST /drives/": lambda h: send(h, 302, b"", Location="file:///etc/passwd")}
    ) as server:
        done = server.run("openhosting", "drives", DRIVE, "destroy")
    assert done.returncode == 1
    assert "HTTP 302" in done.stderr and "'file:///etc/passwd'" in done.stderr


def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
    """A chunked answer that never ends (until the client goes, or a minute has passed)."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    piece = b"size 1\n" * 10000
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    except OSError:
        pass  # the client stopped reading: as it should
    handler.close_connection = True


@pytest.mark.parametrize("tool", ["openhosting-download", "openhosting-upload"])
def test_an_endless_drive_info_is_refused_not_read_into_memory(tool: str, tmp_path: Path) -> None:
    # Before: the tool read it into memory (~75 MB a second) until the minute was over.
    image = tmp_path / "image"
    image.write_bytes(b"x" * 1000)
    args = [DRIVE, image] if tool == "openhosting-download" else ["-d", DRIVE, image]
    with hostile_server({"GET /info": endless}) as server:
        started = time.monotonic()
        done = server.run(tool, *args, timeout=30)
    assert done.returncode == 1, done
    assert "is longer than 1048576 bytes: not an answer of the API" in done.stderr
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("size", ["²", "-5", "12abc", "99999999999999999999999999"])
def test_a_drive_info_with_an_impossible_size_is_named(size: str, tmp_path: Path) -> None:
    # Before: '²' (a digit to str.isdigit) was a ValueError traceback, '-5' and '12abc' a
    # "not found" of a drive the server had just described.
    with hostile_server({"GET /info": drive_info(size)}) as server:
        done = server.run("openhosting-download", DRIVE, tmp_path / "out")
    assert done.returncode == 1, done
    assert done.stderr == f"The info of drive {DRIVE} has no valid size: {size!r}\n"
    assert [request for request in server.seen if "/read/" in request] == []
    assert not (tmp_path / "out").exists()


def first_chunk_only(data: bytes) -> Answer:
    """Reads: the first chunk's bytes, and a 500 `failed` for any other offset."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        offset = int(handler.path.split("/read/")[1].split("/")[0])
        if offset == 0:
            send(handler, 200, data[:CHUNK])
        else:
            send(handler, 500, b"Disk on fire\n", X_Elastic_Error="failed")

    return answer


def test_a_download_over_an_old_file_that_stops_early_keeps_only_what_it_fetched(
    tmp_path: Path,
) -> None:
    # Before: the old file kept its 4 chunks, so the next run without -o (which resumes from
    # the file's size) said "completed" over 3 chunks of the old bytes.
    data = os.urandom(4 * CHUNK)
    target = tmp_path / "image"
    target.write_bytes(b"\xff" * (4 * CHUNK))  # an older download of the drive
    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": first_chunk_only(data)}
    with hostile_server(answers) as server:
        done = server.run(
            "openhosting-download", "-c", str(CHUNK), "-p", "1", "-o", "0", DRIVE, target
        )
        assert done.returncode == 1
        assert done.stderr.endswith(
            f"Disk on fire\nRestart with '-o {CHUNK}' to resume the download\n"
        )
        assert target.read_bytes() == data[:CHUNK]
        again = server.run("openhosting-download", "-c", str(CHUNK), "-p", "1", DRIVE, target)
    assert again.returncode == 1 and "completed" not in again.stdout
    assert again.stdout.startswith(f"Downloading 3 chunks of {CHUNK} bytes starting at {CHUNK}: ")


def test_an_offset_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    # Before: the chunks were written from -o on and the bytes before it were a hole, read
    # back as zeros the drive never held.
    data = os.urandom(4 * CHUNK)
    target = tmp_path / "image"
    target.write_bytes(data[:CHUNK])
    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": first_chunk_only(data)}
    with hostile_server(answers) as server:
        done = server.run(
            "openhosting-download", "-c", str(CHUNK), "-o", str(2 * CHUNK), DRIVE, target
        )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"{target} holds {CHUNK} bytes: -o {2 * CHUNK} would leave the bytes before it missing"
        " (without -o the download resumes from the file's size)\n"
    )
    assert [request for request in server.seen if "/read/" in request] == []
    assert target.read_bytes() == data[:CHUNK]


def test_control_characters_from_the_server_reach_the_terminal_escaped() -> None:
    # Before: written as they came, so an error text or a header could retitle the terminal
    # (OSC 0), clear it and print a fake prompt in its place.
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 500, b"\x1b]0;owned\x07\x1b[2Jnothing wrong\n", X_Elastic_Error="failed",
             X_Note="\x1b[31mred")  # fmt: skip

    with hostile_server({"POST /drives/": answer}) as server:
        done = server.run("openhosting", "-v", "drives", "list")
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr
    assert "< X-Note: \\x1b[31mred\n" in done.stderr
    assert done.stderr.endswith("\\x1b]0;owned\\x07\\x1b[2Jnothing wrong\n")


def whole_drive(data: bytes) -> Answer:
    """Reads: the bytes of `data` asked for."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        offset, length = map(int, handler.path.split("/read/")[1].split("/")[:2])
        send(handler, 200, data[offset : offset + length])

    return answer


def test_a_full_disk_fails_the_download_saying_so_and_it_resumes_once_there_is_room(
    tmp_path: Path,
) -> None:
    # Before: "OSError: [Errno 28] No space left on device", a Python exception's name for
    # the write of the file, which the tool did not name.
    data = os.urandom(4 * CHUNK)
    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": whole_drive(data)}
    with hostile_server(answers) as server, small_tmpfs(tmp_path / "disk", 150 * 1024) as disk:
        target = disk / "image"
        done = server.run("openhosting-download", "-c", str(CHUNK), "-p", "1", DRIVE, target)
        assert done.returncode == 1 and done.stdout.endswith("E\n")
        assert done.stderr == (
            f"Failed to read chunk at offset {2 * CHUNK}: aborting\n"
            f"Cannot write {target} at offset {2 * CHUNK}: No space left on device\n"
            f"Restart with '-o {2 * CHUNK}' to resume the download\n"
        )
        assert target.read_bytes()[: 2 * CHUNK] == data[: 2 * CHUNK]
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], timeout=30, check=True)
        again = server.run("openhosting-download", "-c", str(CHUNK), DRIVE, target)
        assert again.returncode == 0, again
        assert again.stdout.startswith(
            f"Downloading 2 chunks of {CHUNK} bytes starting at {2 * CHUNK}"
        )
        assert target.read_bytes() == data


def chunked_reads(data: bytes, extra: bytes = b"") -> Answer:
    """Reads: the bytes asked for (and `extra` after them) with Transfer-Encoding chunked,
    as a reverse proxy may send them, in two pieces."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        offset, length = map(int, handler.path.split("/read/")[1].split("/")[:2])
        body = data[offset : offset + length] + extra
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for piece in (body[: len(body) // 2], body[len(body) // 2 :]):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    return answer


def test_chunks_sent_with_chunked_encoding_are_taken_when_whole(tmp_path: Path) -> None:
    # Before: every chunk failed, "had 65536 bytes or more, 65536 expected": a chunked body is
    # not seen to end until read past its last byte.
    data = os.urandom(3 * CHUNK)
    target = tmp_path / "image"
    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": chunked_reads(data)}
    with hostile_server(answers) as server:
        done = server.run("openhosting-download", "-c", str(CHUNK), DRIVE, target)
    assert done.returncode == 0, done
    assert target.read_bytes() == data
    answers["GET /read/"] = chunked_reads(data, extra=b"!")
    with hostile_server(answers) as server:
        done = server.run("openhosting-download", "-c", str(CHUNK), "-o", "0", DRIVE, target)
    assert done.returncode == 1
    assert f"had {CHUNK} bytes or more, {CHUNK} expected" in done.stderr


@pytest.mark.parametrize("drive", ["\x1b]0;owned\x07", "../../servers/x", ""])
def test_a_created_drive_that_is_no_uuid_is_refused_before_any_chunk(
    drive: str, tmp_path: Path
) -> None:
    # Before: printed as it came ("Created drive \x1b]0;owned\x07", a terminal escape) and put
    # in each chunk's path (POST /drives/../../servers/x/write/0).
    image = tmp_path / "image"
    image.write_bytes(os.urandom(1000))

    def created(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 200, f"drive {drive}\nsize 1000\n".encode())

    with hostile_server({"POST /drives/create": created}) as server:
        done = server.run("openhosting-upload", image)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "Failed to create drive of size 1000: the answer names no drive\n"
    assert server.seen == ["POST /drives/create"]


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself, and its key (made with openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return cert, key


def test_https_with_an_untrusted_certificate_fails_closed_and_says_how_to_trust_one(
    self_signed: tuple[Path, Path], tmp_path: Path
) -> None:
    # Before: "TLS with URL failed: CERTIFICATE_VERIFY_FAILED", no reason, no way shown.
    cert, key = self_signed
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    data = os.urandom(CHUNK)
    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": whole_drive(data)}
    with hostile_server(answers, tls=context) as server:
        done = server.run("openhosting-download", DRIVE, tmp_path / "image")
        assert server.seen == []  # no request, no Authorization: the handshake failed first
        trusted = server.run(
            "openhosting-download", DRIVE, tmp_path / "image", SSL_CERT_FILE=str(cert)
        )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"TLS with https://127.0.0.1:{server.port}/ failed: its certificate is not trusted"
        " (self-signed certificate); nothing was sent. A CA of your own is trusted with"
        " SSL_CERT_FILE=<its PEM file>\n"
    )
    assert trusted.returncode == 0, trusted
    assert (tmp_path / "image").read_bytes() == data


@pytest.mark.parametrize("encoding", ["deflate", "br"])
def test_a_chunk_in_an_encoding_not_asked_for_is_refused(encoding: str, tmp_path: Path) -> None:
    # Before: its bytes (of the right length) were written as the drive's, and "completed".
    data = os.urandom(CHUNK)

    def encoded(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 200, data, Content_Encoding=encoding)

    answers = {"GET /info": drive_info(str(len(data))), "GET /read/": encoded}
    with hostile_server(answers) as server:
        done = server.run("openhosting-download", DRIVE, tmp_path / "image")
    assert done.returncode == 1 and "completed" not in done.stdout
    assert f"is encoded as '{encoding}', which was not asked for\n" in done.stderr
    assert "Restart with '-o 0' to resume the download" in done.stderr
