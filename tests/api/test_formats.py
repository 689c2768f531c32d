"""The wire contract shared by every command: negotiation, leniency, methods, errors
(docs/api.md §1–3)."""

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from openhosting import errors
from openhosting.api.handlers import HANDLERS
from openhosting.api.negotiation import error_response
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive
from tests.conftest import serve_api

ALL_ERRORS = [
    (errors.UsageError, 400, "usage"),
    (errors.AuthError, 401, "auth"),
    (errors.BillingError, 402, "billing"),
    (errors.MissingError, 404, "missing"),
    (errors.MethodError, 405, "method"),
    (errors.BusyError, 409, "busy"),
    (errors.FailedError, 500, "failed"),
    (errors.SystemError_, 500, "system"),
    (errors.FullError, 507, "full"),
]


@pytest.mark.parametrize(("kind", "status", "header"), ALL_ERRORS)
async def test_every_error_type_has_its_status_header_and_one_text_line(
    aiohttp_client, platform: Platform, auth: dict[str, str], kind, status: int, header: str
) -> None:  # type: ignore[no-untyped-def]
    async def failing(_request: web.Request) -> None:
        raise kind("Something\nwent wrong")

    client = await serve_api(aiohttp_client, platform, {**HANDLERS, "drives.list": failing})
    response = await client.get("/drives/list", headers={**auth, "Accept": "application/json"})
    assert response.status == status
    assert response.headers["X-Elastic-Error"] == header
    assert response.content_type == "text/plain"
    assert await response.text() == "Something went wrong\n"
    assert error_response(kind("x")).status == status


async def test_an_unexpected_fault_is_500_system_without_details(
    aiohttp_client, platform: Platform, auth: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    async def broken(_request: web.Request) -> None:
        raise RuntimeError("secret internals")

    client = await serve_api(aiohttp_client, platform, {**HANDLERS, "drives.list": broken})
    response = await client.get("/drives/list", headers=auth)
    assert response.status == 500
    assert response.headers["X-Elastic-Error"] == "system"
    assert "secret internals" not in await response.text()


async def test_case_30_get_on_a_state_changing_command_is_405_method(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.get("/servers/00000000-0000-4000-8000-000000000000/start", headers=auth)
    assert response.status == 405
    assert response.headers["X-Elastic-Error"] == "method"


async def test_case_31_unknown_command_is_404_missing(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.get("/nosuch/command", headers=auth)
    assert response.status == 404
    assert response.headers["X-Elastic-Error"] == "missing"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(client: TestClient, auth: dict[str, str], method: str) -> None:
    response = await client.request(method, "/drives/list", headers=auth)
    assert response.status == 405
    assert response.headers["X-Elastic-Error"] == "method"


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "text/*, */*;q=0.1"])
async def test_text_is_the_default_output(
    client: TestClient, auth: dict[str, str], accept: str | None
) -> None:
    drive = (await create_drive(client, auth, 10))["drive"]
    headers = dict(auth) if accept is None else {**auth, "Accept": accept}
    response = await client.get(f"/drives/{drive}/info", headers=headers)
    assert response.content_type == "text/plain"
    assert parse_properties(await response.text())["drive"] == drive


async def test_json_when_accept_asks_for_it(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 10))["drive"]
    headers = {**auth, "Accept": "text/html, application/json;q=0.9"}
    listing = await client.get("/drives/list", headers=headers)
    assert listing.content_type == "application/json"
    assert listing.headers["X-Elastic-Output"] == "list"
    assert await listing.json() == [{"drive": drive}]
    info = await client.get(f"/drives/{drive}/info", headers=headers)
    document = await info.json()
    assert document["size"] == 10 and document["read:bytes"] == 0
    assert isinstance(document["name"], str)


async def test_empty_json_typed_body_is_read_as_empty_text(
    client: TestClient, auth: dict[str, str]
) -> None:
    # libcloud sends Content-Type: application/json with empty bodies.
    drive = (await create_drive(client, auth, 10))["drive"]
    response = await client.post(
        f"/drives/{drive}/set", data=b"", headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status == 200
    missing_size = await client.post(
        "/drives/create", data=b"  ", headers={**auth, "Content-Type": "application/json"}
    )
    assert missing_size.status == 400
    assert "size" in await missing_size.text()


@pytest.mark.parametrize(
    "content_type",
    ["application/octet-stream", "application/x-www-form-urlencoded", "text/plain", None],
)
async def test_key_value_text_is_read_whatever_the_content_type_says(
    client: TestClient, auth: dict[str, str], content_type: str | None
) -> None:
    headers = dict(auth) if content_type is None else {**auth, "Content-Type": content_type}
    response = await client.post("/drives/create", data=b"name x y\nsize 1k", headers=headers)
    assert response.status == 200
    info = parse_properties(await response.text())
    assert (info["name"], info["size"]) == ("x y", "1024")


async def test_json_input_takes_numbers_lists_and_strings(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {"name": "ünïcode ☃", "size": 2048, "tags": ["a", "b"], "user:n": "l1\nl2"}
    response = await client.post(
        "/drives/create",
        data=json.dumps(body),
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
    )
    document = await response.json()
    assert (document["name"], document["size"], document["tags"]) == ("ünïcode ☃", 2048, "a b")
    assert document["user:n"] == "l1\nl2"


async def test_invalid_json_and_non_utf8_text_are_usage_errors(
    client: TestClient, auth: dict[str, str]
) -> None:
    bad_json = await client.post(
        "/drives/create", data=b"{nope", headers={**auth, "Content-Type": "application/json"}
    )
    assert bad_json.status == 400 and bad_json.headers["X-Elastic-Error"] == "usage"
    bad_text = await client.post("/drives/create", data=b"name \xff\nsize 1", headers=auth)
    assert bad_text.status == 400 and bad_text.headers["X-Elastic-Error"] == "usage"


async def test_an_unknown_resource_type_answers_missing(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.post("/resources/disk/create", data=b"name x", headers=auth)
    assert response.status == 404
    assert response.headers["X-Elastic-Error"] == "missing"


async def test_a_malformed_uuid_in_the_path_is_missing(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.get("/drives/not-a-uuid/info", headers=auth)
    assert response.status == 404
    assert response.headers["X-Elastic-Error"] == "missing"
