"""What every answer's headers carry, set as they go: its request's id (X-Request-Id),
`X-Content-Type-Options: nosniff`, `Cache-Control: no-store` unless the handler chose its
own, and no Basic challenge for the dashboard's requests.

Answers a handler returns get them from the route's composed handler (api/app.py); answers a
handler sends itself (streams, WebSockets) must be started with `prepare` below. (Not an
`on_response_prepare` hook: aiohttp runs a hook as two more coroutines for every answer.)
"""

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from openhosting.api.context import REQUEST_ID_KEY
from openhosting.api.sessions import drop_basic_challenge

# What every answer carries. Every answer is read as the type it says: a drive's bytes, an
# echoed path or a user's names are never taken by a browser for a page or a script of the
# daemon's origin (which the dashboard's `script-src 'self'` would run). A user's objects
# (servers' VNC passwords among them) stay in no browser's cache: the dashboard's reads were
# kept on disk, and readable from the cache after the sign-out. Public files (the pages,
# noVNC) say how they may be kept.
_EVERY_ANSWER = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_EVERY_ANSWER_OWN_CACHING = {"X-Content-Type-Options": "nosniff"}


def stamp(
    request: web.BaseRequest, response: web.StreamResponse, request_id: str | None = None
) -> None:
    """Give `response` (not yet started) the headers every answer carries (`request_id`:
    the request's, when the caller has it at hand)."""
    if request_id is None:
        request_id = request.get(REQUEST_ID_KEY)
    # The headers object taken once and set in one call: each access and each set is a
    # call of its own, about 1 µs of a cheap request's ~55 (bench `api`).
    headers = response.headers
    headers.update(_EVERY_ANSWER_OWN_CACHING if "Cache-Control" in headers else _EVERY_ANSWER)
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    if "WWW-Authenticate" in headers:
        drop_basic_challenge(request, response)


async def prepare(
    request: web.BaseRequest, response: web.StreamResponse
) -> AbstractStreamWriter | None:
    """Start `response`, a stream or WebSocket a handler sends itself: `response.prepare`
    with the headers every answer carries."""
    stamp(request, response)
    return await response.prepare(request)
