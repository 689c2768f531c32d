"""Dashboard sign-ins meet the API's abuse limits (api/abuse.py): failures counted with Basic
authentication's, slowed then refused with Retry-After; the user's request rate, with 429.
And a platform reached through HTTPS marks its session cookie Secure."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.api.sessions import SESSION_COOKIE
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
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
