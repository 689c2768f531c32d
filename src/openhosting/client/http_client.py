"""The small HTTP client the client tools share.

One endpoint (`OHURI`), HTTP Basic auth (`OHAUTH`), keep-alive connections (one per thread,
so that parallel chunks each have their own), request bodies streamed from files without
reading them whole, a time limit on every socket operation, and failures turned into the
platform's error types: an HTTP error becomes the class of its `X-Elastic-Error` type with the
body's text as message; a connection that cannot be made becomes a `ConnectionFailed` that
says what to check.
"""

import base64
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urlsplit

from isal import isal_zlib

from openhosting.errors import (
    ERROR_TYPES,
    ApiError,
    AuthError,
    FailedError,
    SystemError_,
    UsageError,
)

# Seconds any one socket operation (connect, send, a wait for the answer) may take. A drive
# write is answered only once its bytes are durable, which can take a while on a busy disk.
# `OH_TIMEOUT` sets it (tool.py).
DEFAULT_TIMEOUT = 300.0
# Bytes sent per system call when a body streams from a file.
SEND_BLOCK = 1024 * 1024
# How often a request refused with 429 is sent again, and the longest Retry-After honoured.
BUSY_RETRIES = 5
MAX_RETRY_AFTER = 30.0
# The longest answer read whole (an info, a hash, a created drive, an error's text): a server
# that sends more is broken or hostile, and memory must not grow with what it sends.
ANSWER_LIMIT = 1024 * 1024
# zlib's window bits for the gzip format.
_GZIP_WBITS = 31

# Errors on a reused keep-alive connection that mean the server closed it while it was idle.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

Body = bytes | bytearray | memoryview | BinaryIO | None
Trace = Callable[[str], None]


class ConnectionFailed(SystemError_):
    """The endpoint could not be reached, or did not answer as an HTTP server."""


class HttpError(ApiError):
    """An HTTP error without an `X-Elastic-Error` type: not an answer of the API itself."""


@dataclass(frozen=True)
class Endpoint:
    """Where the API is: the parts of `OHURI`."""

    scheme: str
    host: str
    port: int
    base_path: str  # always ends with "/"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    def target(self, path: str) -> str:
        """The request target for an API path such as `drives/list`."""
        return self.base_path + path.lstrip("/")


def _without_userinfo(uri: str) -> str:
    """`uri` as an error message may show it: what precedes its last "@" (a user and
    password, however malformed the rest) replaced by "…"."""
    if "@" not in uri:
        return uri
    scheme, separator, _ = uri.partition("://")
    return f"{scheme + separator if separator else ''}…@{uri.rpartition('@')[2]}"


def parse_endpoint(uri: str) -> Endpoint:
    """The endpoint `uri` names (`http://HOST[:PORT][/PATH][/]`; the trailing slash is optional)."""
    parts = urlsplit(uri.strip())
    shown = repr(_without_userinfo(uri.strip()))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"Invalid OHURI {shown}: expected the API endpoint URI, e.g. http://127.0.0.1:8080/"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"Invalid OHURI {shown}: the port is not a number") from None
    base = parts.path if parts.path.endswith("/") else parts.path + "/"
    return Endpoint(parts.scheme, parts.hostname, port, base)


def api_path(*components: str) -> str:
    """An API path from its components, each percent-encoded where a URL needs it."""
    return "/".join(quote(component, safe="/:@!$&'()*+,;=-._~") for component in components)


def retry_after_seconds(header: str) -> float:
    """The wait a `Retry-After` header asks for (seconds only), within 0–MAX_RETRY_AFTER;
    1 s when it is missing or unreadable."""
    try:
        seconds = float(header.strip())
    except ValueError:
        return 1.0
    if seconds != seconds:  # NaN
        return 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def basic_authorization(user: str, secret: str) -> str:
    """The `Authorization` header value for `user` and `secret`."""
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def terminal_safe(text: str) -> str:
    """`text` from the server as it may be shown on a terminal: control characters (an escape
    sequence could retitle, clear or rewrite the user's screen) written as `\\xNN`; line
    breaks and tabs kept."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char in "\n\t" else ascii(char)[1:-1] for char in text
    )


def error_from_response(
    status: int, reason: str, kind: str, text: str, url: str, *, location: str = ""
) -> ApiError:
    """The error an HTTP error response (any status but 2xx) stands for: its `X-Elastic-Error`
    type's class; `location` is a redirect's target, named but never followed."""
    text, reason = terminal_safe(text), terminal_safe(reason)
    text = text.strip() or f"HTTP {status} {reason}"
    error_type = ERROR_TYPES.get(kind.split(" ")[0].strip().lower()) if kind else None
    if error_type is None:
        if status == 401:
            error_type = AuthError
        else:
            # No API answers without the header: OHURI probably names some other server.
            redirect = f" (it redirects to {location!r})" if location else ""
            foreign = HttpError(
                f"HTTP {status} {reason} from {url}{redirect}: is OHURI the API endpoint?"
            )
            foreign.status = status
            return foreign
    if error_type is AuthError:
        text += " (check OHAUTH: <user uuid>:<secret API key>)"
    error = error_type(text)
    error.status = status
    return error


class ApiClient:
    """Requests to one endpoint with one set of credentials, safe to use from many threads."""

    def __init__(
        self,
        endpoint: Endpoint,
        authorization: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        trace: Trace | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._authorization = authorization
        self._timeout = timeout
        self._trace = trace
        self._local = threading.local()

    # -- connections ------------------------------------------------------------------

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.endpoint.scheme == "https":
            return http.client.HTTPSConnection(
                self.endpoint.host,
                self.endpoint.port,
                timeout=self._timeout,
                context=ssl.create_default_context(),
                blocksize=SEND_BLOCK,
            )
        return http.client.HTTPConnection(
            self.endpoint.host, self.endpoint.port, timeout=self._timeout, blocksize=SEND_BLOCK
        )

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it has carried a request before."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or connection.sock is None:
            if connection is not None:
                connection.close()
            connection = self._new_connection()
            self._local.connection = connection
            return connection, False
        return connection, True

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def close(self) -> None:
        """Close this thread's connection (other threads' close when their thread ends)."""
        self._drop_connection()

    # -- requests ---------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Body = None,
        *,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """Send a request and return the response, its body still to be read.

        `body` is bytes, or a binary file of `length` bytes that is streamed. Any status but
        2xx raises the matching `ApiError` after reading its text; redirects are not followed.
        A 429 (the platform's request rate or transfer cap) is waited out and sent again, up
        to BUSY_RETRIES times, when the body can be sent again.
        """
        if body is not None and not isinstance(body, bytes | bytearray | memoryview):
            if length is None:
                raise ValueError("a streamed body needs its length")
        elif body is not None:
            length = len(body)
        replayable = body is None or isinstance(body, bytes | bytearray | memoryview)
        for attempt in range(BUSY_RETRIES + 1):
            response = self._send(method, path, body, length, headers)
            if response.status != 429 or not replayable or attempt == BUSY_RETRIES:
                break
            wait = retry_after_seconds(response.getheader("Retry-After", ""))
            self._skip_error_text(response)
            if self._trace is not None:
                self._trace(f"* busy: sending again in {wait:g} s")
            time.sleep(wait)
        if not 200 <= response.status < 300:
            # A redirect is an error too: followed, it could take the credentials to another
            # host; taken as a success, a chunk it answered counted as written.
            self._raise_for(response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        body: Body,
        length: int | None,
        headers: Mapping[str, str] | None,
    ) -> http.client.HTTPResponse:
        """One exchange, on this thread's connection (a new one if the idle one was closed)."""
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                return self._exchange(connection, method, path, body, length or 0, headers)
            except _STALE_CONNECTION:
                self._drop_connection()
                # A connection idle since its last request may have been closed by the server:
                # a body that is in memory can be sent again, once, on a new one.
                if attempt == 2 or not reused or not isinstance(body, bytes | bytearray | None):
                    raise self._connection_error(ConnectionResetError("connection reset")) from None
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                raise self._connection_error(error) from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: Body,
        length: int,
        headers: Mapping[str, str] | None,
    ) -> http.client.HTTPResponse:
        target = self.endpoint.target(path)
        host = self.endpoint.host if ":" not in self.endpoint.host else f"[{self.endpoint.host}]"
        default_port = 443 if self.endpoint.scheme == "https" else 80
        all_headers = {
            "Host": host if self.endpoint.port == default_port else f"{host}:{self.endpoint.port}",
            "User-Agent": "openhosting-tools/1",
            "Authorization": self._authorization,
            **(headers or {}),
        }
        if body is not None or method == "POST":
            all_headers["Content-Length"] = str(length)
        if self._trace is not None:
            self._trace(f"> {method} {target} HTTP/1.1")
            for key, value in all_headers.items():
                shown = "Basic <hidden>" if key == "Authorization" else value
                self._trace(f"> {key}: {shown}")
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for key, value in all_headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            self._send_body(connection, body, length)
        except (BrokenPipeError, ConnectionResetError):
            # The server may have answered (an error) before reading the whole body and closed
            # the connection: its answer says more than the broken pipe.
            response = connection.getresponse()
        else:
            response = connection.getresponse()
        if self._trace is not None:
            version = "HTTP/1.1" if response.version == 11 else "HTTP/1.0"
            self._trace(terminal_safe(f"< {version} {response.status} {response.reason}"))
            for key, value in response.getheaders():
                self._trace(terminal_safe(f"< {key}: {value}"))
        return response

    @staticmethod
    def _send_body(connection: http.client.HTTPConnection, body: Body, length: int) -> None:
        if body is None:
            return
        if isinstance(body, bytes | bytearray | memoryview):
            connection.send(body)
            return
        remaining = length
        while remaining:
            block = body.read(min(SEND_BLOCK, remaining))
            if not block:
                raise UsageError(f"The request body ended {remaining} bytes early")
            connection.send(block)
            remaining -= len(block)

    def _skip_error_text(self, response: http.client.HTTPResponse) -> str:
        """An error answer's text, its first 64 KiB: a longer one is not worth reading to the
        end (its connection is dropped instead); "" when the connection broke."""
        try:
            text = response.read(64 * 1024).decode("utf-8", "replace")
            if not response.isclosed():
                self._drop_connection()
        except (OSError, http.client.HTTPException):
            self._drop_connection()
            text = ""
        return text

    def _raise_for(self, response: http.client.HTTPResponse) -> None:
        text = self._skip_error_text(response)
        raise error_from_response(
            response.status,
            response.reason,
            response.getheader("X-Elastic-Error", ""),
            text,
            self.endpoint.url,
            location=response.getheader("Location", ""),
        )

    @contextmanager
    def _reading_answer(self) -> Iterator[None]:
        """Reading an answer's body: a connection that breaks meanwhile is dropped and becomes
        a `ConnectionFailed` that says what to check."""
        try:
            yield
        except (OSError, http.client.HTTPException) as error:
            self._drop_connection()
            raise self._connection_error(error) from None

    def _connection_error(self, error: BaseException) -> ConnectionFailed:
        url = self.endpoint.url
        if isinstance(error, ConnectionRefusedError):
            return ConnectionFailed(
                f"Cannot connect to {url}: connection refused (is the API running there?"
                " check OHURI)"
            )
        if isinstance(error, socket.gaierror):
            return ConnectionFailed(
                f"Cannot find host {self.endpoint.host!r} of OHURI {url}: {error.strerror}"
            )
        if isinstance(error, TimeoutError):
            return ConnectionFailed(f"No answer from {url} within {self._timeout:g} s")
        if isinstance(error, ssl.SSLCertVerificationError):
            # Failed closed, before the request (and its Authorization) went out.
            return ConnectionFailed(
                f"TLS with {url} failed: its certificate is not trusted"
                f" ({error.verify_message}); nothing was sent. A CA of your own is trusted"
                " with SSL_CERT_FILE=<its PEM file>"
            )
        if isinstance(error, ssl.SSLError):
            return ConnectionFailed(f"TLS with {url} failed: {error.reason or error}")
        if isinstance(error, ConnectionResetError | BrokenPipeError):
            return ConnectionFailed(f"The connection to {url} was closed before an answer")
        if isinstance(error, http.client.HTTPException):
            return ConnectionFailed(f"{url} did not answer as an HTTP server (check OHURI)")
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        return ConnectionFailed(f"Connection to {url} failed: {reason}")

    # -- conveniences -----------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Body = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """A request whose whole answer is returned (small answers only)."""
        response = self.request(method, path, body, headers=headers)
        return self.read_all(response)

    def stream(self, response: http.client.HTTPResponse, block: int) -> Iterator[bytes]:
        """The answer's body as it arrives, in pieces of at most `block` bytes."""
        while True:
            with self._reading_answer():
                piece = response.read1(block)
            if not piece:
                return
            yield piece

    def read_all(self, response: http.client.HTTPResponse, limit: int = ANSWER_LIMIT) -> bytes:
        """The whole answer, at most `limit` bytes: a longer one is a FailedError (read no
        further, its connection dropped)."""
        with self._reading_answer():
            data = response.read(limit + 1)  # less only at the body's end
        if len(data) > limit:
            self._drop_connection()
            raise FailedError(
                f"The answer from {self.endpoint.url} is longer than {limit} bytes: not an"
                " answer of the API"
            )
        return data

    def read_gzip(self, response: http.client.HTTPResponse, length: int) -> bytes:
        """The `length` bytes a gzip-encoded answer holds (a small answer: a never-written
        range); any other length is an error."""
        # Deflate grows what it cannot compress by a few bytes per 16 KiB block at most.
        packed = self.read_all(response, limit=length + length // 1024 + 64 * 1024)
        inflater = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
        try:
            # At most one byte more than expected: a longer answer is refused, not inflated.
            data = inflater.decompress(packed, length + 1)
        except (OSError, EOFError, ValueError, isal_zlib.error) as error:  # type: ignore[misc]
            raise FailedError(
                f"The answer from {self.endpoint.url} is not valid gzip: {error}"
            ) from None
        if len(data) != length:
            raise FailedError(
                f"The answer from {self.endpoint.url} had {len(data)} bytes, {length} expected"
            )
        if not inflater.eof:
            raise FailedError(f"The answer from {self.endpoint.url} is not one whole gzip member")
        return data

    def read_into(self, response: http.client.HTTPResponse, buffer: memoryview) -> None:
        """Fill `buffer` exactly from the answer's body; a short body is an error."""
        filled = 0
        with self._reading_answer():
            while filled < len(buffer):
                count = response.readinto(buffer[filled:])
                if not count:
                    break
                filled += count
            # A body without a Content-Length (chunked, as a proxy may send it, or ended by
            # closing) is not seen to end until read past its last byte: one more is asked.
            longer = filled == len(buffer) and not response.isclosed() and response.read(1)
        if filled != len(buffer) or longer:
            self._drop_connection()
            raise FailedError(
                f"The answer from {self.endpoint.url} had {filled} bytes"
                f"{' or more' if filled == len(buffer) else ''}, {len(buffer)} expected"
            )
