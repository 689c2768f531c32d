"""Logging set-up: one `key=value` line per event, and per request through the access log."""

import logging
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from openhosting.api.context import USER_KEY


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


class RequestLogger(AbstractAccessLogger):
    """One line per request: who asked what, the answer, and how long it took."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return  # don't gather what nobody will read
        error = response.headers.get("X-Elastic-Error", "-")
        # Paths are logged as sent (raw_path, still percent-encoded) here and in every event
        # line: a decoded `%0A` would let any client start a forged line of its own.
        self.logger.info(
            "event=request remote=%s user=%s method=%s path=%s status=%s error=%s bytes=%s ms=%.1f",
            request.remote,
            request.get(USER_KEY, "-"),
            request.method,
            request.raw_path,
            response.status,
            error,
            response.body_length,
            time * 1000,
        )
