"""Content negotiation: reading key/value request bodies and writing payloads and errors in
text or JSON, with the X-Elastic-* headers (docs/api.md §2, §3)."""

import asyncio

from aiohttp import web
from aiohttp.client_exceptions import ClientPayloadError

from openhosting.api.body_readers import STOPPING_MESSAGE, DaemonStopping
from openhosting.api.context import BODY_READERS_KEY, PLATFORM_KEY
from openhosting.errors import ApiError, UnavailableError, UsageError
from openhosting.wire.json_codec import parse_json_object, render_json
from openhosting.wire.payload import OUTPUT_HEADER, Payload, output_kind
from openhosting.wire.text import parse_properties, render_text

ERROR_HEADER = "X-Elastic-Error"
REALM = 'Basic realm="openhosting"'


def wants_json(request: web.BaseRequest) -> bool:
    """JSON output only when the client asks for it; text otherwise (including `*/*`)."""
    return "application/json" in request.headers.get("Accept", "")


async def read_body_capped(request: web.Request, cap: int) -> bytes:
    """The whole request body, refusing (400 `usage`) one larger than `cap` bytes.

    Reads as it arrives and stops past the cap, so a huge body is never held in memory.
    """
    declared = request.content_length
    if declared is not None and declared > cap:
        raise UsageError(f"Request body too large: at most {cap} bytes of key/value data")
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await read_body_chunk(request)
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            raise UsageError(f"Request body too large: at most {cap} bytes of key/value data")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body_chunk(request: web.Request, timeout: float | None = None) -> bytes:
    """The next piece of the request body (b"" at its end). A body that stalls for the idle
    timeout, or whose client goes away, is a usage error: it is never acknowledged."""
    if timeout is None:
        timeout = request.app[PLATFORM_KEY].config.api.idle_timeout
    request.app[BODY_READERS_KEY].reading(request)
    try:
        # asyncio.timeout, not wait_for: wait_for wraps every call in a task (~16 µs here),
        # which is paid thousands of times per gigabyte a drive write streams.
        async with asyncio.timeout(timeout):
            return await request.content.readany()
    except DaemonStopping:  # a TimeoutError too: first
        raise UnavailableError(STOPPING_MESSAGE) from None
    except TimeoutError:
        raise UsageError(f"Request body stalled for {timeout:g} s") from None
    except (ClientPayloadError, ConnectionResetError, asyncio.IncompleteReadError):
        raise UsageError("Request body incomplete: the client went away") from None


async def read_properties(request: web.Request, cap: int) -> dict[str, str]:
    """The key/value pairs of the request body, in JSON or text (docs/api.md §2 leniency rules).

    JSON only when the Content-Type says so and the body is not empty: libcloud sends empty
    JSON-typed bodies and the shell tool sends text as octet-stream or form-urlencoded.
    """
    body = await read_body_capped(request, cap)
    if request.content_type == "application/json" and body.strip():
        properties = parse_json_object(body)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("Invalid request body: key/value text must be UTF-8") from None
        properties = parse_properties(text)
    for key, value in properties.items():
        # A NUL ends a C string and is no character of any name: shown back, it would cut
        # the text tools' output or the tools reading it.
        if "\0" in key or "\0" in value:
            raise UsageError(f"Invalid key {key!r}: NUL characters are not allowed")
    return properties


# The Content-Type aiohttp writes for `text=..., content_type=...`, given ready: its own
# charset handling costs more per answer than rendering a short list.
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"


def payload_response(request: web.BaseRequest, payload: Payload) -> web.Response:
    """A 200 response carrying `payload` in the format the client asked for."""
    as_json = wants_json(request)
    # Kept on the payload: one answered again unchanged (a listing, an info kept while
    # nothing is committed) is rendered once.
    body = payload.rendered.get(as_json)
    if body is None:
        body = payload.rendered[as_json] = _rendered(payload, as_json)
    return _response(payload, body, as_json)


async def payload_response_off_loop(request: web.BaseRequest, payload: Payload) -> web.Response:
    """`payload_response`, rendered in a worker thread: for thousands of objects, whose text
    would hold the event loop for tens of milliseconds."""
    as_json = wants_json(request)
    body = await asyncio.to_thread(_rendered, payload, as_json)
    return _response(payload, body, as_json)


def _rendered(payload: Payload, as_json: bool) -> bytes:
    return (render_json(payload) if as_json else render_text(payload)).encode()


def _response(payload: Payload, body: bytes, as_json: bool) -> web.Response:
    return web.Response(
        body=body,
        headers={
            OUTPUT_HEADER: output_kind(payload),
            "Content-Type": JSON_TYPE if as_json else TEXT_TYPE,
        },
    )


def error_response(error: ApiError) -> web.Response:
    """The response for `error`: its status, `X-Elastic-Error`, and a one-line text body
    (text in JSON mode too, as docs/api.md §3 says)."""
    headers = {ERROR_HEADER: error.kind}
    if error.kind == "auth":
        headers["WWW-Authenticate"] = REALM
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    message = " ".join(error.message.split()) or error.kind
    return web.Response(
        status=error.status, text=message + "\n", content_type="text/plain", headers=headers
    )
