"""`/`: the dashboard for a browser, and for API clients exactly what it answered before
there was a dashboard (401 without credentials, else 404 missing, like any unknown path)."""

import pytest
from aiohttp.test_utils import TestClient

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "PUT"])
@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "application/json"])
async def test_api_clients_without_credentials_get_401_auth_at_root(
    client: TestClient, method: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = await client.request(method, "/", headers=headers)
    assert response.status == 401
    assert response.headers["X-Elastic-Error"] == "auth"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="openhosting"'
    if method != "HEAD":
        assert await response.text() == (
            "Authentication required: HTTP Basic with your user UUID and API key\n"
        )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
async def test_api_clients_with_credentials_get_404_missing_at_root(
    client: TestClient, auth: dict[str, str], method: str, accept: str | None
) -> None:
    headers = {**auth, **({"Accept": accept} if accept else {})}
    response = await client.request(method, "/", headers=headers)
    assert response.status == 404
    assert response.headers["X-Elastic-Error"] == "missing"
    assert response.content_type == "text/plain"
    assert await response.text() == "Command / could not be found\n"


async def test_a_post_that_accepts_html_is_still_an_api_request(client: TestClient) -> None:
    response = await client.post("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.status == 401
    assert response.headers["X-Elastic-Error"] == "auth"


async def test_a_browser_gets_the_dashboard_page_at_root(client: TestClient) -> None:
    response = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert '<label for="sign-in-user"' in page and '<label for="sign-in-key"' in page
    assert '<script src="/dashboard/app.js"' in page
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_page_files_are_served_and_nothing_else(client: TestClient) -> None:
    script = await client.get("/dashboard/app.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    style = await client.get("/dashboard/style.css")
    assert style.status == 200 and style.content_type == "text/css"
    for path in ("/dashboard/index.html", "/dashboard/..%2Fpages.py", "/dashboard/nothing.js"):
        other = await client.get(path)
        assert other.status == 404, path
        assert other.headers["X-Elastic-Error"] == "missing"
