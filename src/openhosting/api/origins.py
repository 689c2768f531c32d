"""Which page a browser says sent a request (its `Origin` header): the daemon's own, or
another site's. The console's WebSocket and the dashboard's changes refuse another site's."""

from aiohttp import web
from yarl import URL

from openhosting.api.context import platform_of


def _origin_of(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def foreign_origin(request: web.Request) -> str | None:
    """The `Origin` the browser sent when it is not the daemon's own (its public URL, or the
    host this request was sent to); None when it is, or when none was sent (not a browser,
    or an old one)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = {_origin_of(URL(f"{request.scheme}://{request.host}"))}
    if configured := platform_of(request).config.api.public_url:
        allowed.add(_origin_of(URL(configured)))
    try:
        sent = _origin_of(URL(origin))
    except ValueError:
        sent = None
    return None if sent in allowed else origin
