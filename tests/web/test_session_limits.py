"""Dashboard sign-ins meet the API's abuse limits (api/abuse.py): failures counted with Basic
authentication's, slowed then refused with Retry-After; the user's request rate, with 429;
a cap on each user's live sessions, on a real daemon too. And a platform reached through
HTTPS marks its session cookie Secure."""

import http.client
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.api.sessions import SESSION_COOKIE
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from testbed.daemon_process import Daemon, running_daemon
from tests.conftest import basic_auth, config_in
from tests.web.session_helpers import sign_in

FREE, MAXIMUM = 1, 3


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_in(
        tmp_path,
        api={
            "auth_failures_free": FREE,
            "auth_failures_max": MAXIMUM,
            "user_requests_per_second": 1,
            "public_url": "https://dashboard.example.net/",
        },
    )


async def test_failed_sign_ins_are_refused_with_retry_after_like_basic_ones(
    client: TestClient, user: NewKey
) -> None:
    wrong = {"user": user.uuid, "key": "wrong"}
    for _ in range(MAXIMUM):
        failed = await client.post("/dashboard/session", json=wrong)
        assert failed.status == 401 and "Retry-After" not in failed.headers
    locked = await client.post("/dashboard/session", json=wrong)
    assert locked.status == 401
    assert locked.headers["X-Elastic-Error"] == "auth"
    assert int(locked.headers["Retry-After"]) > 0
    # The counts are Basic authentication's too: a wrong Basic key is refused alike.
    basic = await client.get("/drives/list", headers=basic_auth(user, "wrong"))
    assert basic.status == 401 and "Retry-After" in basic.headers
    # The right key is never refused for others' failures.
    await sign_in(client, user)


async def test_a_session_over_the_users_request_rate_gets_429(
    client: TestClient, user: NewKey
) -> None:
    session = await sign_in(client, user)  # a request of the user's too
    statuses = [
        (await client.get("/drives/list", headers=session.reads())).status for _ in range(8)
    ]
    assert 429 in statuses
    refused = await client.get("/drives/list", headers=session.reads())
    assert refused.status == 429
    assert refused.headers["X-Elastic-Error"] == "busy"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_the_cookie_is_secure_when_the_platform_is_reached_through_https(
    client: TestClient, user: NewKey
) -> None:
    response = await client.post("/dashboard/session", json={"user": user.uuid, "key": user.secret})
    assert response.status == 200
    assert SESSION_COOKIE in response.cookies
    assert "Secure" in response.headers["Set-Cookie"]


def daemon_call(
    daemon: Daemon, method: str, path: str, body: bytes | None = None, cookie: str = ""
) -> tuple[int, dict[str, str]]:
    """One request to the real daemon as a dashboard page makes it (no Basic credentials)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def daemon_sign_in(daemon: Daemon, key: str) -> tuple[int, dict[str, str]]:
    body = json.dumps({"user": daemon.user, "key": key}).encode()
    return daemon_call(daemon, "POST", "/dashboard/session", body)


def session_rows(daemon: Daemon) -> int:
    with closing(sqlite3.connect(daemon.state_dir / "openhosting.sqlite")) as database:
        return int(database.execute("SELECT count(*) FROM web_sessions").fetchone()[0])


def cookie_of(headers: dict[str, str]) -> str:
    return headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


def test_a_real_daemon_caps_a_users_sessions_and_locks_out_failed_sign_ins(
    tmp_path: Path,
) -> None:
    env = {
        "OH_API_MAX_SESSIONS_PER_USER": "3",
        "OH_API_AUTH_FAILURES_FREE": "4",
        "OH_API_AUTH_FAILURES_MAX": "8",
    }
    with running_daemon(tmp_path, env) as daemon:
        cookies = []
        for _ in range(10):
            status, headers = daemon_sign_in(daemon, daemon.secret)
            assert status == 200
            cookies.append(cookie_of(headers))
        assert session_rows(daemon) == 3  # was 10: one row per sign-in, each kept 8 h
        for live in cookies[-3:]:
            assert daemon_call(daemon, "GET", "/dashboard/session", cookie=live)[0] == 200
        ended, headers = daemon_call(daemon, "GET", "/dashboard/session", cookie=cookies[0])
        assert (ended, headers["X-Elastic-Error"]) == (401, "auth")
        # Wrong keys: slowed past 4 failures of the user here, refused with Retry-After past 8.
        statuses = []
        for _ in range(10):  # bounded: refused at the 9th
            status, headers = daemon_sign_in(daemon, "wrong")
            statuses.append((status, headers.get("X-Elastic-Error"), "Retry-After" in headers))
            if "Retry-After" in headers:
                break
        assert statuses[-1] == (401, "auth", True), statuses
        assert len(statuses) == 9, statuses
        # Only failures are refused: the owner's right key still signs in (the lock-out
        # is no way to keep them out), and the cap still holds.
        assert daemon_sign_in(daemon, daemon.secret)[0] == 200
        assert session_rows(daemon) == 3
