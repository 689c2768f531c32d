"""The web console's page and noVNC's files under /console/ (docs/api.md §8): served without
authentication, read-only, no directory listing, nothing out of noVNC's `core/` and `vendor/`
modules, and a page load that does not use the token up. noVNC here is a folder of real files
laid out as Debian's `novnc` package lays it out (the browser test uses the package itself)."""

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from tests.api.test_console import add_token, stopped_server, token_row
from tests.conftest import config_in

RFB_MODULE = b"export default class RFB {}\n"


@pytest.fixture
def novnc_dir(tmp_path: Path) -> Path:
    """noVNC as Debian installs it, with a secret beside it and links that lead out."""
    root = tmp_path / "novnc"
    (root / "core" / "util").mkdir(parents=True)
    (root / "vendor" / "pako").mkdir(parents=True)
    (root / "core" / "rfb.js").write_bytes(RFB_MODULE)
    (root / "core" / "util" / "int.js").write_text("export const x = 1;\n")
    (root / "core" / ".hidden.js").write_text("hidden\n")
    (root / "vendor" / "pako" / "inflate.js").write_text("export const y = 2;\n")
    (root / "vnc.html").write_text("<html>noVNC's own page, with a password box</html>\n")
    (tmp_path / "secret.js").write_text("the platform's secret\n")
    (root / "core" / "escape.js").symlink_to(tmp_path / "secret.js")
    return root


@pytest.fixture
def config(tmp_path: Path, novnc_dir: Path) -> Config:
    return config_in(tmp_path, api={"console_novnc_dir": str(novnc_dir)})


async def raw_get(client: TestClient, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client normalising `..` or escapes): the status
    and the whole answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def test_the_page_loads_without_auth_and_without_using_the_token_up(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    server = await stopped_server(client, auth)
    token = add_token(platform, server, user.uuid, time.time() + 60, used=False)
    response = await client.get(f"/console/?token={token}")
    assert response.status == 200, await response.text()
    assert response.content_type == "text/html"
    page = await response.text()
    assert 'src="console.js"' in page and 'id="status"' in page
    assert token not in page  # the page is the same for every token
    headers = response.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"  # the token must not leak in a Referer
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert (row := token_row(platform, token)) is not None and row.used_at is None

    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        response = await client.get(f"/console/{name}")
        assert response.status == 200 and response.content_type == kind, name
    script = await (await client.get("/console/console.js")).text()
    assert 'import("./novnc/core/rfb.js")' in script and '"wss:"' in script
    assert (await client.post("/console/", data="x")).status == 405


async def test_novnc_modules_are_served_read_only_and_nothing_else(client: TestClient) -> None:
    response = await client.get("/console/novnc/core/rfb.js")
    assert response.status == 200 and await response.read() == RFB_MODULE
    assert response.content_type == "text/javascript"
    assert (await client.get("/console/novnc/core/util/int.js")).status == 200
    assert (await client.get("/console/novnc/vendor/pako/inflate.js")).status == 200
    assert (await client.head("/console/novnc/core/rfb.js")).status == 200
    for refused in (
        "/console/novnc/core/",  # no directory listing
        "/console/novnc/core",
        "/console/novnc/vnc.html",  # noVNC's own page (it asks for passwords): not ours
        "/console/novnc/core/.hidden.js",
        "/console/novnc/core/escape.js",  # a symlink out of noVNC
        "/console/novnc/core/missing.js",
        "/console/index.html",  # of our page's folder, only its script and style
        "/console/console.py",
    ):
        response = await client.get(refused)
        assert response.status == 404, refused
        assert response.headers["X-Elastic-Error"] == "missing", refused
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, "/console/novnc/core/rfb.js")
        assert response.status == 405, method


async def test_no_path_leads_out_of_novnc(client: TestClient) -> None:
    for target in (
        "/console/novnc/core/../../secret.js",
        "/console/novnc/core/%2e%2e/%2e%2e/secret.js",
        "/console/novnc/core/..%2f..%2fsecret.js",
        "/console/novnc/core/%2E%2E%5C%2E%2E%5Csecret.js",
        "/console/novnc/core/../vnc.html",
        "/console/novnc/..%2fsecret.js",
        "/console/novnc/core/%00.js",
        "/console/novnc//etc/passwd",
        "/console/novnc/core/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ):
        status, answer = await raw_get(client, target)
        assert status in (400, 401, 404), (target, answer[:200])
        assert b"platform's secret" not in answer and b"root:" not in answer, target


async def test_a_plain_get_of_the_websocket_says_why_a_token_is_refused(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    """What the page shows after its WebSocket was refused: the daemon's words, the token
    not used up by asking."""
    server = await stopped_server(client, auth)
    used = add_token(platform, server, user.uuid, time.time() + 60, used=True)
    expired = add_token(platform, server, user.uuid, time.time() - 1, used=False)
    good = add_token(platform, server, user.uuid, time.time() + 60, used=False)
    for token, words in ((used, "used"), (expired, "expired"), ("nosuch", "Unknown")):
        response = await client.get(f"/console/websocket?token={token}")
        assert response.status == 401 and words in await response.text(), token
    response = await client.get(f"/console/websocket?token={good}")
    assert response.status == 400 and response.headers["X-Elastic-Error"] == "usage"
    assert (row := token_row(platform, good)) is not None and row.used_at is None
