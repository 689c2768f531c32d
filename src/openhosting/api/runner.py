"""The server that runs the API: aiohttp's AppRunner, whose connections answer in the API's
error form (docs/api.md §3) what aiohttp answers itself, before any handler of ours runs.

aiohttp's HTTP parser refuses a request it cannot read (an unknown method token, a target
that is no path, a header line without a colon or over 8 KiB, a bad Content-Length or chunk
size) with a bare 400 whose body quotes the parser over several lines; a fault escaping a
handler would be its bare 500 likewise. aiohttp offers no hook for these answers (issue
aio-libs/aiohttp#3287): they are made by its RequestHandler's `handle_error`, which a subclass
can override, and the runner's server makes the connections' handlers. Only refused requests
go through `handle_error`: a good request costs what it did.
"""

import asyncio
from random import getrandbits

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError
from aiohttp.web_protocol import RequestHandler

from openhosting.api.access_log import parser_complaint
from openhosting.api.answer_headers import stamp
from openhosting.api.context import REQUEST_ID_KEY
from openhosting.api.negotiation import error_response
from openhosting.errors import ApiError, SystemError_, UsageError
from openhosting.logs import REQUEST_ID


def refusal_error(status: int, error: BaseException | None) -> ApiError:
    """The API error for an answer aiohttp would have made with `status` for `error`: a
    request it could not read is `usage`, anything else a fault of ours, `system`."""
    if status >= 500:
        return SystemError_("Internal error; the operator has the details")
    if isinstance(error, InvalidURLError):  # its message is the target alone (`*`)
        return UsageError(f"Malformed HTTP request: invalid target {parser_complaint(error)!r}")
    if isinstance(error, HttpProcessingError):
        complaint = parser_complaint(error).rstrip(":").strip()
        return UsageError(f"Malformed HTTP request: {complaint or type(error).__name__}")
    return UsageError("Malformed HTTP request")


class ApiRequestHandler(RequestHandler):
    """aiohttp's handler of one connection, whose own error answers carry X-Elastic-Error and
    an X-Request-Id, with a one-line text body (aiohttp's still logs them, through the
    runner's logger: api/access_log.py makes a refused request one INFO line)."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = getrandbits(64).to_bytes(8).hex()
        request[REQUEST_ID_KEY] = request_id  # the access log's line
        REQUEST_ID.set(request_id)  # aiohttp's own line (this request's task's context)
        # aiohttp logs the error, and raises ConnectionError if an answer was started.
        bare = super().handle_error(request, status, exc, message)
        answer = error_response(refusal_error(bare.status, exc))
        stamp(request, answer, request_id)
        # What follows a request the parser lost track of cannot be read either.
        answer.force_close()
        return answer


class ApiServer(web.Server):
    """aiohttp's low-level server, whose connections are handled by `ApiRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """`web.AppRunner` serving its app with `ApiServer`: the same options, the same app."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return ApiServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )
