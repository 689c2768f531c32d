"""Where the dashboard lives in the daemon's URL space: `/` (for browsers) and `/dashboard/…`.
None of these paths asks for Basic credentials: the page and its files are public, and the
session handlers authenticate by the key or the cookie themselves."""

from collections.abc import Awaitable, Callable

from aiohttp import web

from openhosting.web import pages, sessions

# Path → handler, every method (the handlers say which they take); the API's application
# adds them with its own cross-cutting concerns (api/app.py).
DASHBOARD_ROUTES: tuple[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("/", pages.root),
    ("/dashboard/session", sessions.session),
    ("/dashboard/session/end", sessions.end),
    ("/dashboard/{name}", pages.static_file),
)
