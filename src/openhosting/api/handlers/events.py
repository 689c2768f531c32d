"""`GET /events`: the caller's own state changes as they happen, as server-sent events.

Each event is one `id:`/`event:`/`data:` block; `data` is a JSON object (`id`, `at`, `type`,
`object`, `change`, and what changed: `status`, `imaging`, …). A client that reconnects with
`Last-Event-ID` (browsers' EventSource does) or `?after=ID` first gets the events it missed,
as far as the daemon still remembers them. A comment line every few seconds keeps proxies
from closing an idle stream and lets the daemon notice a client that has gone.

A stream lasts only as long as what opened it (api/lasting_access.py): once the user's key is
rotated, or the dashboard session whose cookie opened it is signed out or expired, it ends (at
the next event, before sending it, or the next keep-alive), as a new request would be refused.
"""

import json

from aiohttp import web

from openhosting.api.answer_headers import prepare
from openhosting.api.context import platform_of, session_of, user_of
from openhosting.api.lasting_access import access_now, still_holds
from openhosting.api.query import query_parameter
from openhosting.errors import BusyError, UsageError
from openhosting.services.events import Event, Overflowed

KEEPALIVE_SECONDS = 15.0


def _resume_point(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or query_parameter(request, "after")
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise UsageError(f"Invalid event id {text[:40]!r}: expected a number")
    return int(text)


def _block(event: Event) -> bytes:
    data = json.dumps(event.as_dict(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    after = _resume_point(request)
    platform = platform_of(request)
    events = platform.events
    session = session_of(request)
    access = access_now(platform, user_of(request), session.id if session else None)
    try:
        subscription = events.subscribe(user_of(request), after)
    except OverflowError as error:
        raise BusyError(str(error)) from None
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx in front must not hold events back
            }
        )
        await prepare(request, response)
        await response.write(b": connected\n\n")
        while True:
            try:
                event = await subscription.next_event(KEEPALIVE_SECONDS)
            except TimeoutError:
                if not still_holds(platform, access):
                    break
                await response.write(b": keep-alive\n\n")
                continue
            except Overflowed:
                await response.write(b"event: overflow\ndata: {}\n\n")
                break
            if event is None or not still_holds(platform, access):  # stopping; shut out
                break
            # Whatever else is waiting goes in the same write: a busy feed costs one write
            # per wake-up, not per event.
            batch = [event, *subscription.pending()]
            await response.write(b"".join(_block(e) for e in batch))
        await response.write_eof()
        return response
    finally:  # also when the client went away mid-write
        subscription.close()
