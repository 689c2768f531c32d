"""The access log: one line per request, with its id, caller, answer and duration."""

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from openhosting.api.context import REQUEST_ID_KEY, USER_KEY

# A console token in a query (`/console/websocket?token=…`) is a credential: never logged.
_TOKEN_IN_QUERY = re.compile(r"(?<=[?&]token=)[^&]*")


def loggable_path(raw_path: str) -> str:
    """`raw_path` with the value of any `token` query parameter hidden."""
    return _TOKEN_IN_QUERY.sub("-", raw_path)


class RequestLogger(AbstractAccessLogger):
    """One line per request: who asked what, the answer, and how long it took."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return  # don't gather what nobody will read
        error = response.headers.get("X-Elastic-Error", "-")
        # Paths are logged as sent (raw_path, still percent-encoded) here and in every event
        # line: a decoded `%0A` would let any client start a forged line of its own.
        self.logger.info(
            "event=request request_id=%s remote=%s user=%s method=%s path=%s status=%s"
            " error=%s bytes=%s ms=%.1f",
            request.get(REQUEST_ID_KEY, "-"),
            request.remote,
            request.get(USER_KEY, "-"),
            request.method,
            loggable_path(request.raw_path),
            response.status,
            error,
            response.body_length,
            time * 1000,
        )
