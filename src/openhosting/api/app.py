"""The aiohttp application: the route table, each route's handler composed with what every
request gets (auth, errors, request id, metrics), method rules."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from random import getrandbits
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from openhosting.api.abuse import AuthThrottle, TransferLimiter, UserRateLimiter
from openhosting.api.access_log import SERVER_LOG, loggable_path
from openhosting.api.answer_headers import stamp
from openhosting.api.auth import (
    AUTH_THROTTLE_KEY,
    RATE_LIMITER_KEY,
    VERIFIED_HEADERS_KEY,
    authenticate_request,
    known_basic_user,
)
from openhosting.api.body_readers import BodyReaders
from openhosting.api.context import (
    BODY_READERS_KEY,
    METRICS_KEY,
    PLATFORM_KEY,
    READINESS_KEY,
    REQUEST_ID_KEY,
    TRANSFER_LIMITER_KEY,
    user_of,
)
from openhosting.api.metrics import UNMATCHED, PlatformMetrics
from openhosting.api.negotiation import (
    error_response,
    payload_response,
    payload_response_off_loop,
)
from openhosting.api.routes import (
    ROUTES,
    Handler,
    HandlerResult,
    Kind,
    Route,
    canonical_path,
    unavailable,
)
from openhosting.api.sessions import check_same_origin, drop_basic_challenge
from openhosting.api.verified_headers import VerifiedHeaders
from openhosting.errors import (
    ApiError,
    FailedError,
    FullError,
    MethodError,
    MissingError,
    SystemError_,
    UnavailableError,
    UsageError,
)
from openhosting.logs import REQUEST_ID
from openhosting.services.accounts.audit import object_of
from openhosting.services.off_loop import INLINE_ITEMS
from openhosting.services.platform import Platform
from openhosting.store.errors import is_database_unreachable, is_storage_full, storage_io_error
from openhosting.web.routes import DASHBOARD_ROUTES
from openhosting.wire.payload import Properties, PropertiesList, ValueList

log = logging.getLogger("openhosting.api")

READ_METHODS = frozenset({"GET", "HEAD", "POST"})
# The key holding a new object's id in what a create command answers.
CREATED_KEYS = ("drive", "server", "resource")

# What a successful command tells the event feed: (object type, change). Commands that are
# not here publish through their service (a server's status, imaging) or not at all (writes).
COMMAND_EVENTS = {
    "drives.create": ("drive", "created"),
    "drives.set": ("drive", "changed"),
    "drives.destroy": ("drive", "destroyed"),
    "servers.create": ("server", "created"),
    "servers.create_stopped": ("server", "created"),
    "servers.set": ("server", "changed"),
    "servers.destroy": ("server", "destroyed"),
    "resources.create": ("resource", "created"),
    "resources.set": ("resource", "changed"),
    "resources.destroy": ("resource", "destroyed"),
}

# Options of the server that runs the app (aiohttp's AppRunner). Drive writes decode
# `Content-Encoding: gzip` themselves, in bounded pieces and with a faster library. Requests
# that aiohttp's HTTP parser refuses are logged as one line, not an error with a traceback.
RUNNER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "logger": SERVER_LOG}


# What aiohttp calls for a request: one composed handler per route (below).
Serve = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_handler(
    label: str,
    basic_auth: bool,
    serve: Serve,
    metrics: PlatformMetrics,
    verified: VerifiedHeaders,
    limiter: UserRateLimiter,
) -> Serve:
    """`serve` with what every request gets, composed once per route at start-up rather than
    as middleware (aiohttp runs each middleware, and its own one that a middleware brings,
    as more coroutine frames and awaits per request: several µs of a cheap request's ~60):
    authentication (unless the route authenticates by other means), an id (in its log lines
    and its answer's X-Request-Id), every failure turned into the API's error form (nothing
    escapes as a bare 500), and its count and latency in the metrics under `label`, its URL
    pattern."""

    observe = metrics.requests.of_route(label).observe

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        # An id to find the request's lines by, not a secret: the 64 bits of
        # random.getrandbits are as unlikely to repeat as os.urandom's, without a system call.
        # (16 hex digits, as f"{:016x}" writes them, in half its time.)
        request_id = getrandbits(64).to_bytes(8).hex()
        request[REQUEST_ID_KEY] = request_id
        REQUEST_ID.set(request_id)
        status: int | str = "aborted"  # the client went away before an answer
        try:
            try:
                # A header verified before is known without a coroutine (most requests).
                if basic_auth and not known_basic_user(request, verified, limiter):
                    await authenticate_request(request)
                response = await serve(request)
            except Exception as error:
                response = _failure_answer(request, error, metrics)
            if not response.prepared:  # a stream its handler sent was stamped as it started
                stamp(request, response, request_id)
            status = response.status
            return response
        finally:
            observe(request.method, status, time.perf_counter() - started)

    return answer


def _failure_answer(
    request: web.Request, error: Exception, metrics: PlatformMetrics
) -> web.StreamResponse:
    """The API's answer to a request whose handling raised `error` (called while handling
    it: a fault of ours is logged with its traceback). Redirects are raised again."""
    if isinstance(error, ApiError):
        if error.kind == "auth":
            metrics.auth_failures.inc()
        return error_response(error)
    if isinstance(error, web.HTTPNotFound):
        return error_response(MissingError(f"Command {request.path} could not be found"))
    if isinstance(error, web.HTTPMethodNotAllowed):
        return error_response(MethodError(f"Method {request.method} not allowed here"))
    if isinstance(error, ConnectionError):
        if _client_went_away(request):
            return _client_gone(request)
        return _internal_error(request)
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            stamp(request, error)  # a redirect: aiohttp answers with the exception
            raise error
        log.warning(
            "event=http_error status=%s path=%s", error.status, loggable_path(request.raw_path)
        )
        return error_response(SystemError_(error.reason))
    if (full := full_error_of(error)) is not None:
        return error_response(full)
    return _internal_error(request)


def _internal_error(request: web.Request) -> web.StreamResponse:
    """A fault of ours: logged with its traceback (called while handling it), 500 `system`."""
    log.exception(
        "event=internal_error method=%s path=%s", request.method, loggable_path(request.raw_path)
    )
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
    log.info("event=client_gone method=%s path=%s", request.method, loggable_path(request.raw_path))
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=CLIENT_GONE_STATUS)


async def _no_command(request: web.Request) -> web.StreamResponse:
    """What a path that is no command answers (after authentication, as any command); and a
    target that is no path (`_route_targets_without_a_path`: CONNECT's, OPTIONS's `*`, the
    only ones aiohttp's parser lets through): 405 `method`, as such a method on a command's
    own path."""
    if not request.path.startswith("/"):
        raise MethodError(
            f"{request.method} is not allowed: the API's commands are paths, asked for with "
            "GET or POST"
        )
    raise MissingError(f"Command {request.path} could not be found")


def _route_targets_without_a_path(router: web.UrlDispatcher, route: web.AbstractRoute) -> None:
    """Give `route` (the catch-all's) the requests whose target is no path: CONNECT's
    `host:port` (aiohttp reads CONNECT's target so even when it is `/drives/list`) and
    OPTIONS's `*`. aiohttp's router looks no route up for them and answered a bare 404,
    without X-Elastic-Error. The router's own `resolve` is replaced by a plain function that
    hands back its coroutine: every other request awaits no more frames than before."""
    resolve = router.resolve

    async def no_path(request: web.Request) -> UrlMappingMatchInfo:
        return UrlMappingMatchInfo({}, route)

    def resolve_any_target(request: web.Request) -> Coroutine[Any, Any, UrlMappingMatchInfo]:
        if request.rel_url.path_safe.startswith("/"):
            return resolve(request)
        return no_path(request)

    router.resolve = resolve_any_target  # type: ignore[method-assign]


def full_error_of(error: BaseException) -> FullError | FailedError | None:
    """The 507 `full` a failure stands for when the platform's storage (the database's disk
    or the drives') is full, the 500 `failed` naming the I/O error when that storage
    fails (EIO), the 503 `failed` when its database cannot be reached now, else None. The
    one place such failures are translated."""
    if isinstance(error, FullError):
        return error
    if is_storage_full(error):
        return FullError("The platform's storage is full")
    if (io_error := storage_io_error(error)) is not None:
        log.warning("event=storage_io_error error=%r", io_error)
        return FailedError(f"The platform's storage failed: {io_error.strerror or 'I/O error'}")
    if is_database_unreachable(error):
        # One line, no traceback: every request fails so while the database is away.
        log.warning("event=database_unreachable error=%s", str(error).splitlines()[0][:300])
        return UnavailableError("The platform's database cannot be reached now: try again")
    return None


def _command_handler(route: Route, handler: Handler) -> Serve:
    """`handler` with the method rules of its command, rendering what it returns."""
    if route.kind is Kind.CHANGE:

        async def change(request: web.Request) -> web.StreamResponse:
            if request.method != "POST":
                raise MethodError(f"{request.method} is not allowed on {request.path}: use POST")
            # Basic credentials too: a browser that once answered the daemon's Basic challenge
            # sends them by itself with another site's form posts. API clients send neither
            # Origin nor Sec-Fetch-Site, and the daemon grants no CORS to any page.
            check_same_origin(request)
            return await _audited(request, route, handler)

        return change

    async def read(request: web.Request) -> web.StreamResponse:
        if request.method not in READ_METHODS:
            raise MethodError(f"{request.method} is not allowed on {request.path}: use POST")
        result = await handler(request)
        if isinstance(result, PropertiesList) and len(result.items) > INLINE_ITEMS:
            return await payload_response_off_loop(request, result)
        return _render(request, result)

    return read


def _render(request: web.Request, result: HandlerResult) -> web.StreamResponse:
    if result is None:
        return web.Response(status=204)
    if isinstance(result, Properties | PropertiesList | ValueList):
        return payload_response(request, result)
    return result


async def _audited(request: web.Request, route: Route, handler: Handler) -> web.StreamResponse:
    """Run a state-changing command and record it, whatever its result; tell the event feed
    what it changed."""
    status, error, created = 500, "system", None
    try:
        result = await handler(request)
        if isinstance(result, Properties) and request.path.endswith(("/create", "/stopped")):
            new_id = next((result.values.get(k) for k in CREATED_KEYS if k in result.values), None)
            created = str(new_id) if new_id is not None else None
        response = _render(request, result)
        status, error = response.status, ""
        _publish(request, route, created)
        return response
    except ApiError as failure:
        status, error = failure.status, failure.kind
        raise
    except Exception as failure:
        if (full := full_error_of(failure)) is None:
            raise
        status, error = full.status, full.kind
        raise full from failure
    finally:
        platform = request.app[PLATFORM_KEY]
        await platform.store.run(
            platform.audit.record, user_of(request), request.remote or "", request.method,
            request.path, status, error, created,
        )  # fmt: skip


def _publish(request: web.Request, route: Route, created: str | None) -> None:
    described = COMMAND_EVENTS.get(route.command)
    object_id = created or object_of(request.path)
    if described is None or object_id is None:
        return
    type_, change = described
    request.app[PLATFORM_KEY].events.publish_command(user_of(request), type_, object_id, change)


async def authenticate_then_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: check the credentials before inviting the body, so a client
    with a wrong key does not upload gigabytes to hear 401. (The expect handler of the
    routes that ask for Basic credentials.)"""
    try:
        await authenticate_request(request)
    except ApiError as error:
        if error.kind == "auth":
            request.app[METRICS_KEY].auth_failures.inc()
        refused = error_response(error)
        drop_basic_challenge(request, refused)
        return refused
    return await continue_expected(request)


async def continue_expected(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` on a route that authenticates by other means: invited at once."""
    expect = request.headers.get("Expect", "")
    if request.version >= (1, 1) and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response's size
    elif request.version >= (1, 1):
        return error_response(UsageError(f"Unknown Expect: {expect}"))
    return None


async def _bind_events(app: web.Application) -> None:
    app[PLATFORM_KEY].events.bind()  # events from worker threads are delivered on this loop


def build_app(platform: Platform, handlers: Mapping[str, Handler] | None = None) -> web.Application:
    """The API application over `platform`; `handlers` maps command names to handlers."""
    app = web.Application(
        # Key/value bodies are read with their own cap, drive writes are streamed: the
        # framework's whole-body limit must never apply.
        client_max_size=platform.config.api.max_body_bytes,
    )
    app[PLATFORM_KEY] = platform
    api = platform.config.api
    app[AUTH_THROTTLE_KEY] = AuthThrottle(
        api.auth_failures_free, api.auth_failures_max, api.auth_failure_window
    )
    app[RATE_LIMITER_KEY] = limiter = UserRateLimiter(api.user_requests_per_second)
    app[VERIFIED_HEADERS_KEY] = verified = VerifiedHeaders(platform.reader)
    app[TRANSFER_LIMITER_KEY] = TransferLimiter(api.max_transfers_per_user, api.max_transfers)
    app[METRICS_KEY] = metrics = PlatformMetrics()
    app[READINESS_KEY] = asyncio.Event()
    app[BODY_READERS_KEY] = BodyReaders()
    platform.events.add_listener(metrics.observe_event)
    app.on_startup.append(_bind_events)
    table = dict(handlers or {})
    for route in ROUTES:
        serve = _command_handler(route, table.get(route.command, unavailable))
        label = canonical_path(route.path)
        app.router.add_route(
            "*",
            route.path,
            _route_handler(label, route.basic_auth, serve, metrics, verified, limiter),
            expect_handler=authenticate_then_continue if route.basic_auth else continue_expected,
        )
    # The dashboard asks for no Basic credentials: its page is public, its session handlers
    # check the key or the cookie.
    for path, page in DASHBOARD_ROUTES:
        app.router.add_route(
            "*", path, _route_handler(path, False, page, metrics, verified, limiter)
        )
    # Last: any other path is no command, answered as one (401 without credentials, else
    # 404 `missing`), counted under one label (paths are unbounded); so is a target that is
    # no path.
    catch_all = app.router.add_route(
        "*",
        "/{path:(?s:.*)}",
        _route_handler(UNMATCHED, True, _no_command, metrics, verified, limiter),
    )
    _route_targets_without_a_path(app.router, catch_all)
    return app
