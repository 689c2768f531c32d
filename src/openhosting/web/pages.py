"""The dashboard's page and its static files, and what `/` answers.

`/` is the dashboard for a browser (a GET or HEAD whose `Accept` names `text/html`) and, for
every other client, exactly what it was before there was a dashboard: `401 auth` without
credentials, else `404 missing`, as for any path that is no command.
"""

from importlib import resources

from aiohttp import web

from openhosting.api.auth import authenticate_request
from openhosting.errors import MissingError

STATIC = resources.files("openhosting.web") / "static"
# The files the page loads, and their types: nothing else under /dashboard/ is served.
STATIC_TYPES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
# The page runs only its own files: no inline script, nothing from elsewhere, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def wants_html(request: web.Request) -> bool:
    """Whether a browser asks: a page load sends `Accept: text/html,…`; API clients send
    `*/*`, `text/plain`, `application/json` or nothing."""
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in request.headers.get("Accept", "").lower()
    )


def _static(name: str, content_type: str) -> web.Response:
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, headers=SECURITY_HEADERS)


async def root(request: web.Request) -> web.StreamResponse:
    if wants_html(request):
        return _static("index.html", "text/html")
    await authenticate_request(request)
    raise MissingError(f"Command {request.path} could not be found")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC_TYPES.get(name)
    if content_type is None or request.method not in ("GET", "HEAD"):
        raise MissingError(f"Command {request.path} could not be found")
    return _static(name, content_type)
