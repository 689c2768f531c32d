"""What every request gets (authentication, an id, errors in the API's form, metrics) is
composed with each route's handler once, at start-up: no middleware and no response hook
run per request. Every kind of answer still carries what they gave it."""

from aiohttp.test_utils import TestClient
from aiohttp.web import Application, ResourceRoute

from openhosting.api.app import build_app
from openhosting.api.handlers import HANDLERS
from openhosting.api.routes import ROUTES, canonical_path
from openhosting.services.platform import Platform
from tests.api.drive_helpers import create_drive
from tests.api.event_stream import EventReader


def test_no_middleware_or_response_hook_runs_per_request(platform: Platform) -> None:
    # aiohttp runs each middleware as two more coroutine frames per request, and each
    # `on_response_prepare` hook as two more coroutines per answer: about a tenth of a
    # cheap request's cost together.
    app = build_app(platform, HANDLERS)
    assert not app.middlewares
    assert not app.on_response_prepare


def test_each_command_is_counted_under_the_pattern_aiohttp_gives_it(platform: Platform) -> None:
    # The metrics' route label is computed from the route table, not read from each
    # request's match: it must be what aiohttp names the resource.
    app: Application = build_app(platform, HANDLERS)
    canonical = {
        route.resource.canonical
        for route in app.router.routes()
        if isinstance(route, ResourceRoute) and route.resource is not None
    }
    assert {canonical_path(route.path) for route in ROUTES} <= canonical


async def test_streamed_answers_carry_a_request_id(
    client: TestClient, auth: dict[str, str]
) -> None:
    plain = (await create_drive(client, auth, 1 << 20))["drive"]
    encrypted = (await create_drive(client, auth, 1 << 20, cipher="aes-xts-plain"))["drive"]
    for drive in (plain, encrypted):
        written = await client.post(f"/drives/{drive}/write", data=b"x" * 4096, headers=auth)
        assert written.status == 204, await written.text()
    ids = set()
    for path, headers in (
        (f"/drives/{plain}/read/0/4096", {}),  # a slice of the file, sent with sendfile
        (f"/drives/{encrypted}/read/0/4096", {}),  # decrypted as it streams
        (f"/drives/{plain}/read/1M", {"Accept-Encoding": "gzip"}),  # never written: zeros
    ):
        response = await client.get(path, headers={**auth, **headers})
        assert response.status == 200, await response.text()
        await response.read()
        ids.add(response.headers["X-Request-Id"])
    response = await client.head(f"/drives/{plain}/read/0/4096", headers=auth)
    ids.add(response.headers["X-Request-Id"])
    events = EventReader(await client.get("/events", headers=auth))
    ids.add(events.response.headers["X-Request-Id"])
    events.response.close()
    assert len(ids) == 5 and all(len(i) == 16 for i in ids)


async def test_refusals_and_unknown_paths_carry_a_request_id_and_their_error(
    client: TestClient, auth: dict[str, str]
) -> None:
    for path, headers, status, error in (
        ("/drives/list", {}, 401, "auth"),
        ("/nothing/here", {}, 401, "auth"),
        ("/nothing/here", auth, 404, "missing"),
        ("/nothing\nhere", auth, 404, "missing"),
        ("/drives/create", auth, 405, "method"),
    ):
        response = await client.get(path, headers=headers)
        assert response.status == status, path
        assert response.headers["X-Elastic-Error"] == error
        assert len(response.headers["X-Request-Id"]) == 16


async def test_a_dashboard_request_refused_before_its_body_gets_no_basic_challenge(
    client: TestClient,
) -> None:
    # The `Expect: 100-continue` check answers before the route's handler runs.
    response = await client.post(
        "/drives/create",
        data=b"size 1M",
        headers={"X-Requested-With": "fetch", "Expect": "100-continue"},
    )
    assert response.status == 401
    assert response.headers["X-Elastic-Error"] == "auth"
    assert "WWW-Authenticate" not in response.headers
