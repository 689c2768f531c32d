"""The answers aiohttp makes itself, before any handler of ours runs, are in the API's error
form (api/runner.py; docs/api.md §1, §3): a request its HTTP parser refuses is 400 `usage`
with X-Elastic-Error, an X-Request-Id and a one-line body, on a real daemon over a raw socket.
They were a bare 400 whose body quoted the parser over several lines."""

import asyncio
import re
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from openhosting.api.access_log import SERVER_LOG
from openhosting.api.runner import ApiRunner
from testbed.daemon_process import Api, Daemon, running_daemon

REQUEST_ID = re.compile(r"[0-9a-f]{16}")
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # At info level: the refusals' log lines are looked at too.
    with running_daemon(tmp_path_factory.mktemp("parser"), {"OH_LOG_LEVEL": "info"}) as running:
        yield running


@pytest.fixture(scope="module")
def drive(daemon: Daemon) -> str:
    return Api(daemon, daemon.url).properties("/drives/create", b"size 1M\nencryption:cipher none")[
        "drive"
    ]


def exchange(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send `request` on a new connection: all the daemon answers until it closes the
    connection, and whether it did (within TIMEOUT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        connection.sendall(request)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
        return answer, True


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ", 2)[1]), headers, body


def refused_requests(auth: bytes, drive: str) -> dict[str, bytes]:
    """Requests aiohttp's parser refuses, by what is wrong with them."""
    write = f"POST /drives/{drive}/write HTTP/1.1\r\nHost: x\r\n".encode() + auth
    create = b"POST /drives/create HTTP/1.1\r\nHost: x\r\n" + auth
    return {
        "unknown method": b"BREW /drives/list HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        "target *": b"GET * HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        "header without colon": b"GET /drives/list HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
        "header over 8 KiB": b"GET /drives/list HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        "request line over 8 KiB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "too many headers": b"GET /drives/list HTTP/1.1\r\n"
        + b"".join(b"X-%d: a\r\n" % n for n in range(200))
        + b"\r\n",
        "bad content-length": write + b"Content-Length: abc\r\n\r\n",
        "two content-lengths": write + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "content-length and chunked": write
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "bad chunk size on a write": write
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "bad chunk size on a create": create
        + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nsize 1M\r\n0\r\n\r\n",
        "NUL in the target": b"GET /drives/list\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/9.9": b"GET /drives/list HTTP/9.9\r\nHost: x\r\n" + auth + b"\r\n",
        "TLS on the plain port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),
    }


CASES = list(refused_requests(b"", ""))


def assert_usage_refusal(answer: bytes, what: str) -> str:
    """`answer` is the API's 400 usage with a request id and a one-line body: that id."""
    status, headers, body = split_answer(answer)
    assert status == 400, (what, answer[:300])
    assert headers.get("X-Elastic-Error") == "usage", (what, answer[:300])
    assert REQUEST_ID.fullmatch(headers.get("X-Request-Id", "")), (what, answer[:300])
    assert headers["Content-Type"].startswith("text/plain"), what
    text = body.decode()
    assert text.startswith("Malformed HTTP request: ") and text.endswith("\n"), (what, text)
    assert text.count("\n") == 1, (what, text)  # aiohttp's own quoted the parser over several
    return headers["X-Request-Id"]


@pytest.mark.parametrize("case", CASES)
def test_a_request_the_parser_refuses_is_400_usage_and_the_connection_closed(
    daemon: Daemon, drive: str, case: str
) -> None:
    auth = f"Authorization: {daemon.auth_header}\r\n".encode()
    answer, closed = exchange(daemon.port, refused_requests(auth, drive)[case])
    assert_usage_refusal(answer, case)
    assert closed, case  # what follows a request the parser lost track of is not read


def test_a_refusal_after_a_good_request_on_one_connection(daemon: Daemon) -> None:
    auth = f"Authorization: {daemon.auth_header}\r\n".encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=TIMEOUT) as connection:
        connection.sendall(b"GET /drives/list HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:  # bounded by the socket's timeout
            answer += (chunk := connection.recv(65536))
            assert chunk, answer
        status, headers, body = split_answer(answer)
        assert (status, "X-Elastic-Error" in headers, "Connection" in headers) == (
            200,
            False,
            False,
        )
        while len(body) < int(headers["Content-Length"]):  # the answer read whole
            body += (chunk := connection.recv(65536))
            assert chunk, answer
        connection.sendall(b"BREW /drives/list HTTP/1.1\r\n\r\n")
        refusal = b""
        while chunk := connection.recv(65536):
            refusal += chunk
    assert_usage_refusal(refusal, "after a good request")


def test_each_refusal_is_one_info_line_with_its_request_id(daemon: Daemon) -> None:
    answer, _ = exchange(daemon.port, b"GET /drives/list HTTP/1.1\r\nNoColon\r\n\r\n")
    request_id = assert_usage_refusal(answer, "header without colon")
    lines = [line for line in daemon.log.read_text().splitlines() if request_id in line]
    refusal = [line for line in lines if "event=malformed_request" in line]
    assert len(refusal) == 1 and " INFO " in refusal[0], lines
    assert "error='Invalid header token:'" in refusal[0]
    logged = [line for line in lines if "event=request " in line]
    assert len(logged) == 1 and "status=400 error=usage" in logged[0], lines
    assert "Traceback" not in daemon.log.read_text()


async def test_a_fault_escaping_a_handler_is_500_system_without_its_traceback() -> None:
    """aiohttp's own 500 for an exception no handler caught (the API's routes catch all of
    theirs: a plain app served by the same runner stands for a route that would not)."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    app = web.Application()
    app.router.add_get("/broken", broken)
    runner = ApiRunner(app, logger=SERVER_LOG)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
    finally:
        await runner.cleanup()
    status, headers, body = split_answer(answer)
    assert (status, headers.get("X-Elastic-Error")) == (500, "system"), answer
    assert b"secret detail" not in body and b"Traceback" not in body
    assert body == b"Internal error; the operator has the details\n"
