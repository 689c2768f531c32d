"""The access log: one line per request, with its id, caller, answer and duration; and the
logger of aiohttp's server, whose lines on requests its HTTP parser refused are one line too."""

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
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


def parser_complaint(error: HttpProcessingError) -> str:
    """The first line of what aiohttp's HTTP parser said of a request it refused, at most 200
    characters (its next lines quote the client's bytes)."""
    complaint = (error.message or type(error).__name__).strip().split("\n", 1)[0]
    return complaint[:200]


class MalformedRequestFilter(logging.Filter):
    """aiohttp's server logs each request its HTTP parser refuses (a bad request line, header
    or framing, answered 400 before any handler runs) as an ERROR with a traceback: any client,
    without credentials, could fill the operator's log with them. Such a record becomes one
    INFO line, `event=malformed_request`, with the parser's complaint (quoted: it holds the
    client's bytes); the 400 itself is in the access log. Other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "event=malformed_request remote=%s status=%s error=%r"
            record.args = (remote, error.code, parser_complaint(error))
            record.exc_info, record.exc_text = None, None
        return True


# What aiohttp's server logs with (AppRunner's `logger`, in place of its `aiohttp.server`).
SERVER_LOG = logging.getLogger("openhosting.http")
SERVER_LOG.addFilter(MalformedRequestFilter())
