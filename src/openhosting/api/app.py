"""The aiohttp application: the middleware (auth, errors), the route table, method rules."""

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from openhosting.api.abuse import AuthThrottle, TransferLimiter, UserRateLimiter
from openhosting.api.auth import AUTH_THROTTLE_KEY, RATE_LIMITER_KEY, authenticate_request
from openhosting.api.context import PLATFORM_KEY, TRANSFER_LIMITER_KEY, user_of
from openhosting.api.negotiation import error_response, payload_response
from openhosting.api.routes import ROUTES, Handler, HandlerResult, Kind, Route, unavailable
from openhosting.errors import ApiError, MethodError, MissingError, SystemError_, UsageError
from openhosting.services.platform import Platform
from openhosting.wire.payload import Properties, PropertiesList, ValueList

log = logging.getLogger("openhosting.api")

READ_METHODS = frozenset({"GET", "HEAD", "POST"})
# The key holding a new object's id in what a create command answers.
CREATED_KEYS = ("drive", "server", "resource")

# Options of the server that runs the app (aiohttp's AppRunner). Drive writes decode
# `Content-Encoding: gzip` themselves, in bounded pieces and with a faster library.
RUNNER_OPTIONS = {"auto_decompress": False}


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request, and turn every failure into the API's error form: nothing
    escapes as a bare 500. (One middleware, not two: each costs a few µs per request.)"""
    try:
        await authenticate_request(request)
        return await handler(request)  # type: ignore[return-value]
    except ApiError as error:
        return error_response(error)
    except web.HTTPNotFound:
        return error_response(MissingError(f"Command {request.path} could not be found"))
    except web.HTTPMethodNotAllowed:
        return error_response(MethodError(f"Method {request.method} not allowed here"))
    except ConnectionError:
        if _client_went_away(request):
            return _client_gone(request)
        return _internal_error(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        log.warning("event=http_error status=%s path=%s", error.status, request.raw_path)
        return error_response(SystemError_(error.reason))
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.StreamResponse:
    """A fault of ours: logged with its traceback (called while handling it), 500 `system`."""
    log.exception("event=internal_error method=%s path=%s", request.method, request.raw_path)
    return error_response(SystemError_("Internal error; the operator has the details"))


# nginx's status for "client closed request": only the access log ever shows it.
CLIENT_GONE_STATUS = 499


def _client_went_away(request: web.Request) -> bool:
    """Whether a ConnectionError is the client's doing: its connection is closing, or the
    answer had begun (we send nothing else once it has). A ConnectionError before that, with
    the client still there, is ours (QMP, say)."""
    transport = request.transport
    return transport is None or transport.is_closing() or request.writer.output_size > 0


def _client_gone(request: web.Request) -> web.StreamResponse:
    """The client went away mid-answer (a long read it stopped): nobody to answer, and no
    fault of ours. The connection is closed; the placeholder answer is never sent, only
    logged (aiohttp finds the transport closed)."""
    log.info("event=client_gone method=%s path=%s", request.method, request.raw_path)
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=CLIENT_GONE_STATUS)


def _command_handler(
    route: Route, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap `handler` with the method rules of its command and render what it returns."""

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.method not in READ_METHODS or (
            route.kind is Kind.CHANGE and request.method != "POST"
        ):
            raise MethodError(f"{request.method} is not allowed on {request.path}: use POST")
        if route.kind is Kind.CHANGE:
            return await _audited(request, handler)
        return _render(request, await handler(request))

    return serve


def _render(request: web.Request, result: HandlerResult) -> web.StreamResponse:
    if result is None:
        return web.Response(status=204)
    if isinstance(result, Properties | PropertiesList | ValueList):
        return payload_response(request, result)
    return result


async def _audited(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run a state-changing command and record it, whatever its result."""
    status, error, created = 500, "system", None
    try:
        result = await handler(request)
        if isinstance(result, Properties) and request.path.endswith(("/create", "/stopped")):
            new_id = next((result.values.get(k) for k in CREATED_KEYS if k in result.values), None)
            created = str(new_id) if new_id is not None else None
        response = _render(request, result)
        status, error = response.status, ""
        return response
    except ApiError as failure:
        status, error = failure.status, failure.kind
        raise
    finally:
        request.app[PLATFORM_KEY].audit.record(
            user_of(request), request.remote or "", request.method, request.path, status, error,
            created,
        )  # fmt: skip


async def authenticate_then_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: check the credentials before inviting the body, so a client
    with a wrong key does not upload gigabytes to hear 401."""
    try:
        await authenticate_request(request)
    except ApiError as error:
        return error_response(error)
    expect = request.headers.get("Expect", "")
    if request.version >= (1, 1) and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response's size
    elif request.version >= (1, 1):
        return error_response(UsageError(f"Unknown Expect: {expect}"))
    return None


def build_app(platform: Platform, handlers: Mapping[str, Handler] | None = None) -> web.Application:
    """The API application over `platform`; `handlers` maps command names to handlers."""
    app = web.Application(
        middlewares=[api_middleware],
        # Key/value bodies are read with their own cap, drive writes are streamed: the
        # framework's whole-body limit must never apply.
        client_max_size=platform.config.api.max_body_bytes,
    )
    app[PLATFORM_KEY] = platform
    api = platform.config.api
    app[AUTH_THROTTLE_KEY] = AuthThrottle(
        api.auth_failures_free, api.auth_failures_max, api.auth_failure_window
    )
    app[RATE_LIMITER_KEY] = UserRateLimiter(api.user_requests_per_second)
    app[TRANSFER_LIMITER_KEY] = TransferLimiter(api.max_transfers_per_user, api.max_transfers)
    table = dict(handlers or {})
    for route in ROUTES:
        handler = table.get(route.command, unavailable)
        app.router.add_route(
            "*",
            route.path,
            _command_handler(route, handler),
            expect_handler=authenticate_then_continue,
        )
    return app
