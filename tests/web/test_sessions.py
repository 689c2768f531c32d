"""Dashboard sessions over HTTP, without a browser: the cookie, its expiry and sign-out, the
session stored hashed, CSRF, and one user's session against another's objects."""

import hashlib
import time

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from openhosting.api.handlers import events as events_handler
from openhosting.api.sessions import SESSION_COOKIE
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store import audit as audit_store
from openhosting.store.tables import web_sessions
from tests.api.event_stream import EventReader
from tests.conftest import basic_auth
from tests.web.session_helpers import SignedIn, sign_in


def stored_hashes(platform: Platform) -> list[str]:
    with platform.engine.connect() as connection:
        return list(connection.execute(select(web_sessions.c.token_hash)).scalars())


async def test_sign_in_sets_an_httponly_strict_expiring_cookie(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    response = await client.post(
        "/dashboard/session", json={"user": user.uuid.upper(), "key": user.secret}
    )
    assert response.status == 200
    body = await response.json()
    assert body["user"] == user.uuid
    assert body["expires"] > time.time() + platform.config.api.session_seconds - 60
    set_cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes
    assert "SameSite=Strict" in set_cookie
    assert f"Max-Age={platform.config.api.session_seconds}" in set_cookie
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    token = response.cookies[SESSION_COOKIE].value
    assert user.secret not in set_cookie and user.secret not in await response.text()
    # The database holds the token's SHA-256, not the token.
    assert stored_hashes(platform) == [hashlib.sha256(token.encode()).hexdigest()]


async def test_a_session_reads_the_api_and_changes_with_its_csrf_token(
    client: TestClient, user: NewKey
) -> None:
    session = await sign_in(client, user)
    info = await client.get("/dashboard/session", headers=session.reads())
    assert (await info.json())["csrf"] == session.csrf
    listed = await client.get("/drives/info", headers=session.reads())
    assert listed.status == 200 and await listed.json() == []
    created = await client.post(
        "/drives/create", json={"name": "d", "size": "1M"}, headers=session.changes()
    )
    assert created.status == 200, await created.text()
    assert (await created.json())["user"] == user.uuid


async def assert_refused_as_cross_site(client: TestClient, path: str, **kwargs: object) -> None:
    response = await client.post(path, **kwargs)  # type: ignore[arg-type]
    assert response.status == 403, await response.text()
    assert response.headers["X-Elastic-Error"] == "auth"


async def test_a_change_without_the_csrf_token_is_refused_and_does_nothing(
    client: TestClient, user: NewKey
) -> None:
    session = await sign_in(client, user)
    body = {"name": "forged", "size": "1M"}
    await assert_refused_as_cross_site(client, "/drives/create", json=body, headers=session.reads())
    wrong = {**session.changes(), "X-CSRF-Token": "0" * 64}
    await assert_refused_as_cross_site(client, "/drives/create", json=body, headers=wrong)
    # A POST of a read-only command is a change as far as CSRF goes: POST is never trusted.
    await assert_refused_as_cross_site(client, "/drives/list", headers=session.reads())
    listed = await client.get("/drives/list", headers=session.reads())
    assert await listed.json() == []


async def test_a_forged_cross_site_post_is_refused(client: TestClient, user: NewKey) -> None:
    """What another site's page can make a browser send: a form POST, with that site's
    Origin (and Sec-Fetch-Site), even in a browser that sent the cookie along."""
    session = await sign_in(client, user)
    created = await client.post(
        "/servers/create/stopped", json={"name": "s", "cpu": 500, "mem": 64, "persistent": True},
        headers=session.changes(),
    )  # fmt: skip
    server = (await created.json())["server"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    evil = {"Origin": "https://evil.example", **form}
    await assert_refused_as_cross_site(
        client, f"/servers/{server}/destroy", data="x=1", headers={**session.reads(), **evil}
    )
    # Even with the CSRF token (were it ever stolen): another site's Origin is refused.
    await assert_refused_as_cross_site(
        client, f"/servers/{server}/destroy", headers={**session.changes(), **evil}
    )
    fetch_site = {**session.changes(), "Sec-Fetch-Site": "cross-site"}
    await assert_refused_as_cross_site(client, f"/servers/{server}/destroy", headers=fetch_site)
    # Signing a victim in to an account of the attacker's (login CSRF) is refused as well.
    await assert_refused_as_cross_site(
        client, "/dashboard/session", json={"user": user.uuid, "key": user.secret},
        headers={"Origin": "https://evil.example"},
    )  # fmt: skip
    form_sign_in = await client.post(
        "/dashboard/session", data=f"user={user.uuid}&key={user.secret}", headers=form
    )
    assert form_sign_in.status == 400 and SESSION_COOKIE not in form_sign_in.cookies
    still = await client.get(f"/servers/{server}/info", headers=session.reads())
    assert still.status == 200


async def test_sign_out_ends_the_session_on_the_daemon(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    session = await sign_in(client, user)
    without_csrf = await client.post("/dashboard/session/end", headers=session.reads())
    assert without_csrf.status == 403
    ended = await client.post("/dashboard/session/end", headers=session.changes())
    assert ended.status == 204
    assert f'{SESSION_COOKIE}=""' in ended.headers["Set-Cookie"]
    assert stored_hashes(platform) == []
    # The old cookie opens nothing any more, though the browser (or a thief) kept it.
    for path in ("/drives/list", "/dashboard/session"):
        refused = await client.get(path, headers=session.reads())
        assert refused.status == 401, path
        assert refused.headers["X-Elastic-Error"] == "auth"
        assert "WWW-Authenticate" not in refused.headers  # no browser password dialog


async def test_an_expired_session_is_refused(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    session = await sign_in(client, user)
    with platform.engine.begin() as connection:
        connection.execute(update(web_sessions).values(expires=time.time() - 1))
    refused = await client.get("/servers/info", headers=session.reads())
    assert refused.status == 401
    assert "expired" in await refused.text()


async def test_a_wrong_key_signs_nobody_in(client: TestClient, user: NewKey) -> None:
    for who in ({"user": user.uuid, "key": "wrong"}, {"user": "nobody", "key": user.secret}):
        response = await client.post("/dashboard/session", json=who)
        assert response.status == 401
        assert response.headers["X-Elastic-Error"] == "auth"
        assert "wrong user UUID or secret API key" in await response.text()
        assert SESSION_COOKIE not in response.cookies
    made_up = SignedIn(user.uuid, "made-up-cookie", "x")
    guessed = await client.get("/drives/list", headers=made_up.reads())
    assert guessed.status == 401


async def test_another_users_session_sees_and_touches_none_of_the_first_users_objects(
    client: TestClient, user: NewKey, other_user: NewKey
) -> None:
    alice = await sign_in(client, user)
    drive = await client.post("/drives/create", json={"size": "1M"}, headers=alice.changes())
    drive_id = (await drive.json())["drive"]
    server = await client.post(
        "/servers/create/stopped",
        json={"name": "a", "cpu": 500, "mem": 64, "persistent": True, "ide:0:0": drive_id},
        headers=alice.changes(),
    )
    server_id = (await server.json())["server"]
    mallory = await sign_in(client, other_user)
    for path in ("/drives/info", "/servers/info", "/resources/info"):
        seen = await client.get(path, headers=mallory.reads())
        assert await seen.json() == [], path
    for path in (
        f"/servers/{server_id}/info",
        f"/drives/{drive_id}/read/0/16",
    ):
        assert (await client.get(path, headers=mallory.reads())).status == 404, path
    for path in (
        f"/servers/{server_id}/start",
        f"/servers/{server_id}/console",
        f"/servers/{server_id}/destroy",
        f"/drives/{drive_id}/destroy",
    ):
        acted = await client.post(path, headers=mallory.changes())
        assert acted.status == 404, path
        assert acted.headers["X-Elastic-Error"] == "missing"
    # Mallory's CSRF token does nothing for Alice's session, nor Alice's for Mallory's.
    crossed = {**alice.reads(), "X-CSRF-Token": mallory.csrf}
    assert (await client.post(f"/servers/{server_id}/destroy", headers=crossed)).status == 403
    still = await client.get(f"/servers/{server_id}/info", headers=alice.reads())
    assert (await still.json())["status"] == "stopped"


async def test_a_sessions_event_stream_carries_its_users_changes_only(
    client: TestClient, user: NewKey, other_user: NewKey
) -> None:
    alice = await sign_in(client, user)
    mallory = await sign_in(client, other_user)
    stream = await client.get("/events", headers=mallory.reads())
    assert stream.status == 200
    try:
        events = EventReader(stream)
        theirs = await client.post("/drives/create", json={"size": "1M"}, headers=alice.changes())
        alices = (await theirs.json())["drive"]
        own = await client.post("/drives/create", json={"size": "1M"}, headers=mallory.changes())
        mallorys = (await own.json())["drive"]
        _, first, _ = await events.until(lambda data: data["type"] == "drive")
        assert first["object"] == mallorys != alices
    finally:
        stream.close()


async def test_a_sessions_event_stream_ends_when_the_session_does(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    """A stream opened with the cookie outlived the session: after sign-out, or the key
    rotated because the cookie was stolen, it still carried every change of the user's."""
    signed_out = await sign_in(client, user)
    rotated = await sign_in(client, user)
    streams = [await client.get("/events", headers=s.reads()) for s in (signed_out, rotated)]
    try:
        assert [stream.status for stream in streams] == [200, 200]
        readers = [EventReader(stream) for stream in streams]
        ended = await client.post("/dashboard/session/end", headers=signed_out.changes())
        assert ended.status == 204
        made = await client.post("/drives/create", data="size 1M", headers=basic_auth(user))
        assert made.status == 200
        assert await readers[0].next() is None  # ended, the drive's event not sent
        _, _, data = await readers[1].next()  # the other session's stream goes on
        assert (data["type"], data["change"]) == ("drive", "created")

        platform.accounts.rotate_key(user.uuid)
        platform.events.publish(user.uuid, "drive", data["object"], "changed")
        assert await readers[1].next() is None
    finally:
        for stream in streams:
            stream.close()


async def test_a_stream_opened_with_a_key_ends_when_the_key_is_rotated(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    rotated = await client.get("/events", headers=basic_auth(user))
    other = await client.get("/events", headers=basic_auth(other_user))
    try:
        assert (rotated.status, other.status) == (200, 200)
        platform.accounts.rotate_key(user.uuid)
        for key in (user, other_user):
            platform.events.publish(key.uuid, "drive", key.uuid, "changed")
        assert await EventReader(rotated).next() is None
        _, _, data = await EventReader(other).next()  # another user's key is unchanged
        assert data["change"] == "changed"
    finally:
        rotated.close()
        other.close()


async def test_an_idle_sessions_event_stream_ends_at_its_keep_alive_once_signed_out(
    client: TestClient, user: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_handler, "KEEPALIVE_SECONDS", 0.2)
    session = await sign_in(client, user)
    stream = await client.get("/events", headers=session.reads())
    try:
        assert stream.status == 200
        ended = await client.post("/dashboard/session/end", headers=session.changes())
        assert ended.status == 204
        assert await EventReader(stream).next(timeout=5.0) is None
    finally:
        stream.close()


async def test_rotating_the_key_ends_the_users_sessions(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    session = await sign_in(client, user)
    others = await sign_in(client, other_user)
    platform.accounts.rotate_key(user.uuid)
    assert (await client.get("/drives/list", headers=session.reads())).status == 401
    assert (await client.get("/drives/list", headers=others.reads())).status == 200


@pytest.mark.parametrize("ended_by", ["rotation", "expiry", "sign-out elsewhere"])
async def test_a_cookie_that_opens_nothing_is_deleted_with_its_401(
    client: TestClient, platform: Platform, user: NewKey, ended_by: str
) -> None:
    """Kept, a dead cookie came with every later page load, each counted as a failed login
    of the address (throttling the user's own sign-in with the right key)."""
    session = await sign_in(client, user)
    if ended_by == "rotation":
        platform.accounts.rotate_key(user.uuid)
    elif ended_by == "expiry":
        with platform.engine.begin() as connection:
            connection.execute(update(web_sessions).values(expires=time.time() - 1))
    else:
        await client.post("/dashboard/session/end", headers=session.changes())
        client.session.cookie_jar.clear()
    refused = await client.get("/drives/list", headers=session.reads())
    assert refused.status == 401
    assert f'{SESSION_COOKIE}=""' in refused.headers["Set-Cookie"]
    assert "Max-Age=0" in refused.headers["Set-Cookie"]


async def test_a_live_cookie_beside_wrong_basic_credentials_is_kept(
    client: TestClient, user: NewKey
) -> None:
    session = await sign_in(client, user)
    wrong = await client.get("/drives/list", headers={**session.reads(), **basic_auth(user, "x")})
    assert wrong.status == 401  # the Basic credentials failed, not the cookie
    assert "Set-Cookie" not in wrong.headers
    assert (await client.get("/drives/list", headers=session.reads())).status == 200


async def test_a_deleted_users_session_opens_nothing(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    session = await sign_in(client, user)
    platform.accounts.delete_user(user.uuid)
    assert (await client.get("/drives/list", headers=session.reads())).status == 401


async def test_a_malformed_sign_in_is_400_usage_never_500(client: TestClient, user: NewKey) -> None:
    json_type = {"Content-Type": "application/json"}
    for body in (
        b"",
        b"{",
        b"[]",
        b'{"user": 1, "key": 2}',
        b'{"user": "' + user.uuid.encode() + b'"}',
        b"\xff\xfe",
        b"[" * 4000,
        b'{"user": "' + b"x" * 100_000 + b'", "key": "k"}',
    ):
        response = await client.post("/dashboard/session", data=body, headers=json_type)
        assert response.status == 400, body[:40]
        assert response.headers["X-Elastic-Error"] == "usage"
        assert SESSION_COOKIE not in response.cookies


async def test_sign_in_sign_out_and_a_sessions_changes_are_in_the_audit_trail(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    session = await sign_in(client, user)
    created = await client.post("/drives/create", json={"size": "1M"}, headers=session.changes())
    drive = (await created.json())["drive"]
    await client.post("/dashboard/session/end", headers=session.changes())
    with platform.engine.connect() as connection:
        trail = audit_store.entries(connection, None, user.uuid, 10)
    assert [(entry.path, entry.status) for entry in trail] == [
        ("/dashboard/session", 200),
        ("/drives/create", 200),
        ("/dashboard/session/end", 204),
    ]
    assert trail[1].object == drive


async def test_past_the_cap_a_sign_in_ends_the_users_oldest_sessions_only(
    client: TestClient, platform: Platform, user: NewKey, other_user: NewKey
) -> None:
    """Sign-ins were unlimited: each a row kept for hours (~400 a second from one client).
    Past `api.max_sessions_per_user` (20) the oldest end; another user's are left alone."""
    cap = platform.config.api.max_sessions_per_user
    assert cap == 20
    others = await sign_in(client, other_user)
    sessions = [await sign_in(client, user) for _ in range(cap + 3)]
    assert len(stored_hashes(platform)) == cap + 1
    for ended in sessions[:3]:
        refused = await client.get("/dashboard/session", headers=ended.reads())
        assert refused.status == 401 and refused.headers["X-Elastic-Error"] == "auth"
    for live in [sessions[3], sessions[-1], others]:
        assert (await client.get("/dashboard/session", headers=live.reads())).status == 200
