"""Where the dashboard lives in the daemon's URL space: `/` (for browsers) and `/dashboard/…`.
None of these paths asks for Basic credentials: the page and its files are public, and the
session handlers authenticate by the key or the cookie themselves."""

from aiohttp import web

from openhosting.web import pages, sessions

DASHBOARD_PATHS = frozenset(
    {"/", "/dashboard/session", "/dashboard/session/end", "/dashboard/{name}"}
)


def add_dashboard(app: web.Application) -> None:
    """Serve the dashboard from `app` (the API's application)."""
    app.router.add_route("*", "/", pages.root)
    app.router.add_route("*", "/dashboard/session", sessions.session)
    app.router.add_route("*", "/dashboard/session/end", sessions.end)
    app.router.add_route("*", "/dashboard/{name}", pages.static_file)
