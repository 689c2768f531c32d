"""What every answer's headers carry for a browser (docs/security.md, "The dashboard's
page"): `X-Content-Type-Options: nosniff`, so that no answer of the daemon's origin (a drive's
bytes, an echoed path, a user's names) is taken for a script the dashboard's
`script-src 'self'` would run; and `Cache-Control: no-store`, so that a user's objects stay in
no browser's cache, unless the answer says otherwise (public files). The browser's side is
tests/browser/test_dashboard_hostile.py."""

from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth
from tests.web.session_helpers import sign_in


async def test_every_kind_of_answer_is_nosniff(client: TestClient, user: NewKey) -> None:
    auth = basic_auth(user)
    made = await client.post("/drives/create", data="name <b>x</b>\nsize 4k", headers=auth)
    drive = parse_properties(await made.text())["drive"]
    written = await client.post(
        f"/drives/{drive}/write",
        data=b"window.PWNED = 1; //",
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert written.status == 204, await written.text()
    session = await sign_in(client, user)
    answers = {
        "properties": await client.get(f"/drives/{drive}/info", headers=auth),
        "json": await client.get("/drives/info", headers=session.reads()),
        "drive bytes": await client.get(f"/drives/{drive}/read", headers=auth),
        "drive range": await client.get(f"/drives/{drive}/read/0/20", headers=auth),
        "error": await client.get("/window.PWNED=1//", headers=auth),
        "no credentials": await client.get("/drives/list"),
        "sign-in": await client.post("/dashboard/session", json={"user": "x", "key": "y"}),
        "console page": await client.get("/console/"),
    }
    assert answers["drive bytes"].content_type == "application/octet-stream"
    assert answers["error"].status == 404
    events = await client.get("/events", headers=auth)
    try:
        answers["event stream"] = events
        for what, answer in answers.items():
            assert answer.headers.get("X-Content-Type-Options") == "nosniff", what
    finally:
        events.close()


async def test_answers_are_not_kept_by_caches_but_public_files_say_their_own(
    client: TestClient, user: NewKey
) -> None:
    session = await sign_in(client, user)
    body = "name s\ncpu 500\nmem 64\nvnc:password s3cr3t"
    made = await client.post("/servers/create/stopped", data=body, headers=basic_auth(user))
    assert made.headers.get("Cache-Control") == "no-store"
    server = parse_properties(await made.text())["server"]
    for path in ("/servers/info", f"/servers/{server}/info", "/account/info", "/nothing"):
        for headers in (session.reads(), basic_auth(user)):
            answer = await client.get(path, headers=headers)
            assert answer.headers.get("Cache-Control") == "no-store", (path, answer.status)
    assert (await client.get("/drives/list")).headers.get("Cache-Control") == "no-store"
    page = await client.get("/", headers={"Accept": "text/html"})
    assert page.headers["Cache-Control"] == "no-cache"  # the dashboard's own, unchanged
    script = await client.get("/console/console.js")
    assert script.headers["Cache-Control"] == "no-cache"
