"""HTTP Basic authentication: every way in is refused alike, with 401 `auth`."""

import base64

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from openhosting.api.auth import AUTH_THROTTLE_KEY, VERIFIED_HEADERS_KEY
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store.tables import metadata
from tests.conftest import basic_auth, changes_heard


async def assert_auth_refused(client: TestClient, headers: dict[str, str]) -> str:
    response = await client.get("/drives/list", headers=headers)
    assert response.status == 401
    assert response.headers["X-Elastic-Error"] == "auth"
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert response.content_type == "text/plain"
    return await response.text()


async def test_no_auth_header_is_refused(client: TestClient) -> None:
    await assert_auth_refused(client, {})


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Basic",
        "Basic !!!notbase64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic \u00e4",  # not base64's alphabet, nor even ASCII
        "Basic w6Q6w6Q=\u00e4",
    ],
)
async def test_malformed_basic_headers_are_refused(client: TestClient, header: str) -> None:
    await assert_auth_refused(client, {"Authorization": header})


async def test_wrong_key_and_unknown_user_get_the_same_answer(
    client: TestClient, user: NewKey
) -> None:
    wrong_key = await assert_auth_refused(client, basic_auth(user, "not-the-secret"))
    stranger = NewKey("00000000-0000-4000-8000-000000000000", user.secret)
    unknown_user = await assert_auth_refused(client, basic_auth(stranger))
    assert wrong_key == unknown_user


async def test_the_right_key_is_let_in(client: TestClient, auth: dict[str, str]) -> None:
    response = await client.get("/nosuch/command", headers=auth)
    assert response.status == 404  # past authentication, to the router


async def test_a_deleted_user_is_refused(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    platform.accounts.delete_user(user.uuid)
    await assert_auth_refused(client, basic_auth(user))


async def test_a_rotated_key_replaces_the_old_one(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    new_key = platform.accounts.rotate_key(user.uuid)
    await assert_auth_refused(client, basic_auth(user))
    response = await client.get("/nosuch/command", headers=basic_auth(new_key))
    assert response.status == 404


async def test_keys_are_stored_only_as_keyed_hashes(platform: Platform, user: NewKey) -> None:
    if platform.engine.dialect.name == "sqlite":
        path = platform.config.database_path
        database = path.read_bytes() + path.with_name(path.name + "-wal").read_bytes()
    else:  # every row of every table, as the database gives them
        with platform.engine.connect() as connection:
            database = "".join(
                str(tuple(row))
                for table in metadata.sorted_tables
                for row in connection.execute(select(table))
            ).encode()
    assert user.secret.encode() not in database
    assert user.uuid.encode() in database


async def test_uppercase_user_uuid_is_accepted(client: TestClient, user: NewKey) -> None:
    upper = NewKey(user.uuid.upper(), user.secret)
    response = await client.get("/nosuch/command", headers=basic_auth(upper))
    assert response.status == 404


async def test_expect_continue_checks_credentials_before_the_body(
    client: TestClient, user: NewKey
) -> None:
    import asyncio

    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    header = basic_auth(user, "wrong")["Authorization"]
    writer.write(
        b"POST /drives/00000000-0000-4000-8000-000000000000/write HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n"
        b"Authorization: " + header.encode() + b"\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401")  # no "100 Continue" first


async def test_expect_continue_with_good_credentials_invites_the_body(
    client: TestClient, auth: dict[str, str]
) -> None:
    made = await client.post("/drives/create", data="size 10\nencryption:cipher none", headers=auth)
    drive = (await made.text()).split("drive ", 1)[1].split()[0]
    response = await client.post(
        f"/drives/{drive}/write", data=b"0123456789", headers={**auth, "Expect": "100-continue"}
    )
    assert response.status == 204


async def test_a_non_ascii_header_counts_as_a_failed_login(client: TestClient) -> None:
    """An unauthenticated request with a non-ASCII header is a failure like any other: its
    address is counted (and so slowed after a few), not answered 500 for free."""
    throttle = client.server.app[AUTH_THROTTLE_KEY]
    assert len(throttle.addresses) == 0
    for _ in range(6):
        await assert_auth_refused(client, {"Authorization": "Basic \u00e4"})
    assert len(throttle.addresses) == 1


async def test_a_key_in_use_is_refused_from_the_request_after_its_rotation(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    for _ in range(2):  # the second answered from the verified headers
        assert (await client.get("/drives/list", headers=basic_auth(user))).status == 200
    new_key = platform.accounts.rotate_key(user.uuid)
    await assert_auth_refused(client, basic_auth(user))
    assert (await client.get("/drives/list", headers=basic_auth(new_key))).status == 200
    platform.accounts.delete_user(user.uuid)
    await assert_auth_refused(client, basic_auth(new_key))


async def test_a_header_is_checked_against_the_keys_once_until_a_commit(
    client: TestClient, platform: Platform, user: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    authenticate = platform.accounts.authenticate

    def counting(uuid: str, secret: str) -> str:
        checked.append(uuid)
        return authenticate(uuid, secret)

    monkeypatch.setattr(platform.accounts, "authenticate", counting)
    await changes_heard(platform)  # PostgreSQL: the user's creation heard back, not later
    for _ in range(3):
        assert (await client.get("/drives/list", headers=basic_auth(user))).status == 200
    assert checked == [user.uuid]  # one check per request on the code before
    # A wrong secret of the same user is another header: checked, refused and counted.
    await assert_auth_refused(client, basic_auth(user, "not-the-secret"))
    assert len(client.server.app[AUTH_THROTTLE_KEY].users) == 1
    # Any commit (here a drive's) and the header is checked again.
    response = await client.post("/drives/create", data="name d\nsize 1M", headers=basic_auth(user))
    assert response.status == 200, await response.text()
    checked.clear()
    assert (await client.get("/drives/list", headers=basic_auth(user))).status == 200
    assert checked == [user.uuid]


async def test_verified_headers_keep_no_secret_in_the_clear(
    client: TestClient, platform: Platform, user: NewKey
) -> None:
    header = basic_auth(user)["Authorization"]
    await changes_heard(platform)  # PostgreSQL: a late echo of the user's creation empties it
    assert (await client.get("/drives/list", headers={"Authorization": header})).status == 200
    verified = client.server.app[VERIFIED_HEADERS_KEY]
    assert len(verified) == 1
    kept = repr(vars(verified)).encode() + b"".join(verified._users)
    for secret in (user.secret, header, header.split()[1]):
        assert secret.encode() not in kept


async def test_a_change_with_basic_credentials_from_another_sites_page_is_refused(
    client: TestClient, user: NewKey
) -> None:
    """A browser keeps the Basic credentials it once typed for the daemon and sends them by
    itself with another site's form posts (tests/browser/test_basic_csrf.py): such a change
    is 403 auth and does nothing, as with the dashboard's cookie. API clients, which send
    neither header, and the daemon's own origin are not refused."""
    auth = basic_auth(user)
    for forged in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling host of the same site
    ):
        response = await client.post(
            "/drives/create", data="name forged\nsize 1M", headers={**auth, **forged}
        )
        assert response.status == 403, forged
        assert response.headers["X-Elastic-Error"] == "auth"
    listed = await client.get("/drives/list", headers=auth)
    assert await listed.text() == ""
    own = {"Origin": str(client.make_url("")).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    for headers in ({}, own):
        response = await client.post(
            "/drives/create", data="name kept\nsize 1M", headers={**auth, **headers}
        )
        assert response.status == 200, await response.text()
    # Reads are not changes: a page of another site may not read their answers anyway.
    read = await client.get("/drives/list", headers={**auth, "Sec-Fetch-Site": "cross-site"})
    assert read.status == 200
