"""Logging set-up: one line per event, `key=value` text or (for log shippers) JSON. Lines
logged while a request is served carry its id (`REQUEST_ID`, set by the HTTP edge), which the
client also sees in the answer's X-Request-Id header."""

import contextvars
import json
import logging
import re
import sys
import time

# The id of the request being served by the current task, if any.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
FORMATS = ("text", "json")
# `key=value` pairs of our messages; a value may be quoted (repr of a string).
_PAIR = re.compile(r"""(\w[\w.:-]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and "request_id=" not in record.getMessage():
            first, newline, rest = line.partition("\n")  # a traceback stays below
            line = f"{first} request_id={request_id}{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and its `key=value` pairs as
    fields (`event`, `server`, …), so a log shipper can index them without parsing."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            if key not in entry:
                entry[key] = value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
