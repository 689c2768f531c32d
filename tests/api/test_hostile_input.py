"""Hostile input to every command of the API: each is a 4xx with the right X-Elastic-Error,
never a 500 (docs/api.md §3).

Table-driven: every route of `ROUTES`, with the user's real objects in its path, receives
every hostile body (as text and as JSON), hostile paths (bad UUIDs, offsets and sizes),
hostile headers and malformed HTTP. Servers are only ever stopped here: no QEMU starts.
"""

import asyncio
import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from openhosting.api.access_log import RequestLogger
from openhosting.api.routes import ROUTES, Kind
from openhosting.config import Config
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from testbed.hostile_input import HOSTILE_HEADERS, JSON_BODIES, TEXT_BODIES, fill
from tests.conftest import config_with_pool, serve_api

# What each 4xx status must say in X-Elastic-Error (docs/api.md §3; 429 is our rate limit).
KIND_OF_STATUS = {
    400: "usage",
    401: "auth",
    402: "billing",
    404: "missing",
    405: "method",
    409: "busy",
    429: "busy",
    507: "full",
}
NOBODY = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_with_pool(tmp_path)


async def _create(client: TestClient, auth: dict[str, str], path: str, body: str) -> str:
    response = await client.post(path, data=body, headers=auth)
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    return info.get("drive") or info.get("server") or info["resource"]


async def user_objects(client: TestClient, auth: dict[str, str]) -> dict[str, str]:
    """The ids that fill each route's placeholders: real objects of the user."""
    return {
        "drive": await _create(client, auth, "/drives/create", "size 1M\nencryption:cipher none"),
        "source": await _create(client, auth, "/drives/create", "size 64k"),
        "server": await _create(
            client, auth, "/servers/create/stopped", "name s\ncpu 1000\nmem 256"
        ),
        "ip": await _create(client, auth, "/resources/ip/create", "name r"),
        "vlan": await _create(client, auth, "/resources/vlan/create", "name v"),
    }


def concrete_paths(objects: dict[str, str]) -> list[tuple[str, Kind]]:
    """Every route with its placeholders filled (both resource types where there is one)."""
    paths: list[tuple[str, Kind]] = []
    for route in ROUTES:
        if route.command == "events.stream":
            continue  # takes no body and never ends; its parameters: tests/api/test_events.py
        if route.command == "servers.start":
            # Starting the user's server would boot QEMU: a stranger's id instead.
            paths.append((f"/servers/{NOBODY}/start", route.kind))
            continue
        for kind in ["ip", "vlan"] if "{type}" in route.path else [""]:
            values = {**objects, "type": kind, "resource": objects.get(kind, ""),
                      "offset": "512", "size": "1k", "conversion": "gzip",
                      "path": "core/rfb.js", "asset": "console.js"}  # fmt: skip
            paths.append((fill(route.path, values), route.kind))
    return paths


def assert_clear_refusal(status: int, headers: dict[str, str], what: str) -> None:
    # 507 `full` is the API's answer to a write past a drive's end: a refusal, not a fault.
    assert status < 500 or status == 507, what
    if status >= 400:
        assert headers.get("X-Elastic-Error") == KIND_OF_STATUS[status], what


@pytest.fixture
def internal_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The test's log records (INFO and up), among which no internal error may be. Read
    through the fixture at check time: the list `caplog.records` gives while fixtures are set
    up is not the one the test's own records go to."""
    caplog.set_level(logging.INFO)
    return caplog


def assert_no_internal_error(log: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in log.records if "internal_error" in r.getMessage()]
    assert bad == []


async def test_every_hostile_body_to_every_command_is_a_clear_4xx(
    client: TestClient, auth: dict[str, str], internal_errors: pytest.LogCaptureFixture
) -> None:
    paths = concrete_paths(await user_objects(client, auth))
    sent = [(body, "application/octet-stream") for body in TEXT_BODIES]
    sent += [(body, "application/json") for body in JSON_BODIES]
    refused_as_usage = set()
    for path, _kind in paths:
        for body, content_type in sent:
            headers = {**auth, "Content-Type": content_type}
            response = await client.post(path, data=body, headers=headers)
            await response.read()
            assert_clear_refusal(response.status, dict(response.headers), f"{path} {body[:60]!r}")
            if response.status == 400:
                refused_as_usage.add(path)
    assert_no_internal_error(internal_errors)
    # The bodies reached the commands that read one (not only the router's 404).
    assert {path for path, _ in paths if path.endswith(("/create", "/set", "/stopped"))} <= (
        refused_as_usage
    )


def hostile_paths(objects: dict[str, str]) -> list[str]:
    drive, source, vlan = objects["drive"], objects["source"], objects["vlan"]
    huge = "9" * 30
    return [
        f"/drives/{drive.upper()}x/info",
        f"/drives/{drive[:-1]}/info",
        "/drives/%00/info",
        "/drives/%ff%fe/info",
        f"/drives/{NOBODY}/read",
        f"/drives/{drive}/read/{huge}",
        f"/drives/{drive}/read/{huge}T",
        f"/drives/{drive}/read/9223372036854775807",
        f"/drives/{drive}/read/9223372036854775807/9223372036854775807",
        f"/drives/{drive}/read/8388607T/8388607T",
        f"/drives/{drive}/read/0/{huge}",
        f"/drives/{source}/read/9223372036854775807/1",
        f"/drives/{source}/read/0/8388608T",
        f"/drives/{drive}/read/-1",
        f"/drives/{drive}/read/1x",
        f"/drives/{drive}/write/{huge}",
        f"/drives/{drive}/write/9223372036854775807",
        f"/drives/{drive}/write/8388607T",
        f"/drives/{source}/write/9223372036854775807",
        f"/drives/{drive}/image/{source}/%ff",
        f"/drives/{drive}/image/{source}/" + "x" * 4000,
        f"/drives/{drive}/image/{drive}",
        f"/drives/{drive}/image/{NOBODY}",
        "/resources/ip/%00/info",
        "/resources/ip/%ed%a0%80/info",
        "/resources/ip/%ff/set",
        "/resources/ip/999.1.1.1/destroy",
        "/resources/ip/192.0.2.10%00/info",
        "/resources/%ff/list",
        "/resources/%00/create",
        "/resources/" + "x" * 4000 + "/info",
        f"/resources/vlan/{vlan.upper()}/info",
        f"/resources/vlan/{vlan}%00/set",
        "/servers/%ed%a0%80/info",
        "/servers/" + "f" * 5000 + "/info",
    ]


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "DELETE", "PROPFIND"])
async def test_hostile_paths_are_a_clear_4xx(
    client: TestClient,
    auth: dict[str, str],
    internal_errors: pytest.LogCaptureFixture,
    method: str,
) -> None:
    for path in hostile_paths(await user_objects(client, auth)):
        response = await client.request(method, path, data=b"x" * 10, headers=auth)
        await response.read()
        assert_clear_refusal(response.status, dict(response.headers), f"{method} {path}")
    assert_no_internal_error(internal_errors)


async def test_hostile_headers_on_every_command_are_a_clear_4xx(
    client: TestClient, auth: dict[str, str], internal_errors: pytest.LogCaptureFixture
) -> None:
    paths = concrete_paths(await user_objects(client, auth))
    for path, _kind in paths:
        for extra in HOSTILE_HEADERS:
            body = b'{"name": "x"}'
            response = await client.post(path, data=body, headers={**auth, **extra})
            await response.read()
            assert_clear_refusal(response.status, dict(response.headers), f"{path} {extra}")
    assert_no_internal_error(internal_errors)


async def raw_exchange(client: TestClient, request: bytes) -> tuple[int, bytes]:
    """Send `request` as bytes on a new connection; the status and head of the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split(b" ", 2)[1]), head


def parse_heads(auth_line: bytes, drive: str) -> list[bytes]:
    """Requests whose framing the HTTP parser refuses (400) before any handler runs."""
    write = f"POST /drives/{drive}/write HTTP/1.1\r\nHost: x\r\n".encode() + auth_line
    create = b"POST /drives/create HTTP/1.1\r\nHost: x\r\n" + auth_line
    return [
        write + b"Content-Length: abc\r\n\r\n",
        write + b"Content-Length: -1\r\n\r\n",
        write + b"Content-Length: 99999999999999999999999999\r\n\r\n",
        write + b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789",
        write + b"Content-Length: 1 0\r\n\r\n",
        write + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        create + b"Content-Length: 18446744073709551616\r\n\r\n",
        b"GET /drives/list\x00 HTTP/1.1\r\nHost: x\r\n" + auth_line + b"\r\n",
        b"GET /drives/list HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n" + auth_line + b"\r\n",
        b"GET /drives/list HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /drives/\xff\xfe/info HTTP/1.1\r\nHost: x\r\n" + auth_line + b"\r\n",
        b"GET /resources/ip/\xed\xa0\x80/info HTTP/1.1\r\nHost: x\r\n" + auth_line + b"\r\n",
        b"BREW /drives/list HTTP/1.1\r\nHost: x\r\n" + auth_line + b"\r\n",
        b"GET /drives/list HTTP/9.9\r\nHost: x\r\n" + auth_line + b"\r\n",
    ]


def handled_requests(auth_line: bytes, drive: str) -> list[bytes]:
    """Well-framed requests with hostile bytes in them: the API itself must refuse them."""
    write = f"POST /drives/{drive}/write HTTP/1.1\r\nHost: x\r\n".encode() + auth_line
    create = b"POST /drives/create HTTP/1.1\r\nHost: x\r\n" + auth_line
    return [
        write + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        create + b"Transfer-Encoding: chunked\r\n\r\n5\r\nsize\xff\r\n0\r\n\r\n",
        create + b"Content-Length: 5\r\n\r\nsize\xff",
        create + b"Content-Type: \xff\xfe\r\nContent-Length: 6\r\n\r\nsize x",
        create + b"Accept: \xff\xfe\r\nContent-Length: 6\r\n\r\nsize x",
        write + b"Content-Encoding: \xff\r\nContent-Length: 1\r\n\r\nx",
        b"GET /drives/list HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\r\n\r\n",
        b"GET /drives/list HTTP/1.1\r\nHost: x\r\nAuthorization: \xc3\xa4\r\n\r\n",
        create + b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n",
    ]


async def test_malformed_http_framing_is_a_400_usage_from_the_parser(
    client: TestClient, auth: dict[str, str], internal_errors: pytest.LogCaptureFixture
) -> None:
    drive = (await user_objects(client, auth))["drive"]
    auth_line = f"Authorization: {auth['Authorization']}\r\n".encode()
    for request in parse_heads(auth_line, drive):
        status, head = await raw_exchange(client, request)
        # With X-Elastic-Error as every answer (api/runner.py; tests/api/test_runner.py).
        assert (status, head_headers(head).get("X-Elastic-Error")) == (400, "usage"), head
    assert_no_internal_error(internal_errors)
    # Each was an ERROR with the parser's traceback in the daemon's log (aiohttp's own line):
    # a client without credentials could fill the log with them. Now one INFO line each.
    loud = [
        r.getMessage()
        for r in internal_errors.records
        if r.levelno >= logging.WARNING or r.exc_info
    ]
    assert loud == []
    refused = [
        r.getMessage()
        for r in internal_errors.records
        if "event=malformed_request" in r.getMessage()
    ]
    assert len(refused) >= len(parse_heads(auth_line, drive)) - 1  # BREW: aiohttp's debug line
    assert not [line for line in refused if "\n" in line]


async def test_hostile_bytes_in_well_framed_requests_are_a_clear_4xx(
    client: TestClient, auth: dict[str, str], internal_errors: pytest.LogCaptureFixture
) -> None:
    drive = (await user_objects(client, auth))["drive"]
    auth_line = f"Authorization: {auth['Authorization']}\r\n".encode()
    for request in handled_requests(auth_line, drive):
        status, head = await raw_exchange(client, request)
        headers = dict(
            line.decode("latin-1").split(": ", 1)
            for line in head.split(b"\r\n")[1:]
            if b": " in line
        )
        assert 400 <= status < 500, (request[:120], head)
        assert_clear_refusal(status, headers, repr(request[:120]))
    assert_no_internal_error(internal_errors)


def head_headers(head: bytes) -> dict[str, str]:
    return dict(
        line.decode("latin-1").split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
    )


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        # aiohttp reads CONNECT's target as host:port even when it looks like a path.
        (b"CONNECT example.com:443 HTTP/1.1", 405),
        (b"CONNECT /drives/list HTTP/1.1", 405),
        (b"CONNECT /nothing HTTP/1.1", 405),
        (b"OPTIONS * HTTP/1.1", 405),
        (b"TRACE /drives/list HTTP/1.1", 405),
        (b"PROPFIND /drives/list HTTP/1.1", 405),
        (b"PROPFIND /nothing HTTP/1.1", 404),
    ],
)
async def test_unusual_methods_and_targets_answer_with_the_error_header(
    client: TestClient, auth: dict[str, str], request_line: bytes, status: int
) -> None:
    """Every answer carries X-Elastic-Error: a target that is no path (CONNECT's, OPTIONS *)
    got aiohttp's bare 404 without it. Credentials are asked for first, as for any path."""
    auth_line = f"Authorization: {auth['Authorization']}\r\n".encode()
    for credentials, expected in [(auth_line, status), (b"", 401)]:
        request = request_line + b"\r\nHost: example.com\r\n" + credentials + b"\r\n"
        got, head = await raw_exchange(client, request)
        headers = head_headers(head)
        assert got == expected, (request, head)
        assert headers.get("X-Elastic-Error") == KIND_OF_STATUS[expected], (request, head)
        assert "X-Request-Id" in headers, head


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"size 1k\nname a\x00b", "text/plain"),
        (b"size 1k\nuser:x\x00 v", "text/plain"),
        (b'{"size": "1k", "name": "a\\u0000b"}', "application/json"),
        (b'{"size": "1k", "tags": ["\\u0000"]}', "application/json"),
    ],
)
async def test_nul_characters_are_refused_in_keys_and_values(
    client: TestClient, auth: dict[str, str], body: bytes, content_type: str
) -> None:
    response = await client.post(
        "/drives/create", data=body, headers={**auth, "Content-Type": content_type}
    )
    assert response.status == 400
    assert response.headers["X-Elastic-Error"] == "usage"
    assert "NUL" in await response.text()


@pytest.fixture
async def logged_client(aiohttp_client: AiohttpClient, platform: Platform) -> TestClient:
    """An in-process API with the daemon's request log."""
    return await serve_api(aiohttp_client, platform, access_log_class=RequestLogger)


@pytest.mark.parametrize("authorized", [True, False])
async def test_a_path_cannot_forge_log_lines(
    logged_client: TestClient,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    authorized: bool,
) -> None:
    caplog.set_level(logging.INFO)
    forged = "/drives/list%0Aevent=server_destroyed%20user=x%0D%0Aevent=auth_ok"
    headers = auth if authorized else {"Authorization": "Basic eDp5"}
    response = await logged_client.get(forged, headers=headers)
    assert response.status == (404 if authorized else 401)
    messages = [record.getMessage() for record in caplog.records]
    assert any("%0A" in message for message in messages if "event=request" in message)
    assert not [message for message in messages if "\n" in message or "\r" in message]
