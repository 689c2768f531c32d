"""The client tools' HTTP client: OHURI and OHAUTH, errors as our types, keep-alive."""

import gzip
import http.server
import io
import threading
from typing import ClassVar

import pytest

from openhosting.client.http_client import (
    BUSY_RETRIES,
    MAX_RETRY_AFTER,
    ApiClient,
    ConnectionFailed,
    HttpError,
    api_path,
    basic_authorization,
    error_from_response,
    parse_endpoint,
    retry_after_seconds,
)
from openhosting.client.tool import client_from_environment
from openhosting.errors import (
    AuthError,
    BusyError,
    FailedError,
    FullError,
    MissingError,
    UsageError,
)
from testbed.daemon_process import free_port
from tests.client.conftest import ApiDaemon


@pytest.mark.parametrize(
    ("uri", "scheme", "host", "port", "target"),
    [
        ("http://127.0.0.1:8080/", "http", "127.0.0.1", 8080, "/drives/list"),
        ("http://127.0.0.1:8080", "http", "127.0.0.1", 8080, "/drives/list"),
        ("https://api.example/", "https", "api.example", 443, "/drives/list"),
        ("http://[::1]:81/api", "http", "::1", 81, "/api/drives/list"),
        ("http://h/api/", "http", "h", 80, "/api/drives/list"),
    ],
)
def test_ohuri_gives_the_endpoint_and_its_paths(
    uri: str, scheme: str, host: str, port: int, target: str
) -> None:
    endpoint = parse_endpoint(uri)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == (scheme, host, port)
    assert endpoint.target("drives/list") == target


@pytest.mark.parametrize("uri", ["127.0.0.1:8080", "ftp://h/", "http://", "http://h:port/"])
def test_a_malformed_ohuri_is_a_usage_error(uri: str) -> None:
    with pytest.raises(UsageError, match="Invalid OHURI"):
        parse_endpoint(uri)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [("http://u:s3cret@h:port/", "'http://…@h:port/'"), ("ftp://u:s3cret@h/", "'ftp://…@h/'"),
     ("u:s3cret@h:8080", "'…@h:8080'"), ("http://u:s3/cret@h/", "'http://…@h/'")],
)  # fmt: skip
def test_a_malformed_ohuri_is_named_without_its_password(uri: str, shown: str) -> None:
    # Before: the whole OHURI was in the message, the password of its user part with it.
    with pytest.raises(UsageError) as raised:
        parse_endpoint(uri)
    assert raised.value.message.startswith(f"Invalid OHURI {shown}: ")
    assert "s3" not in raised.value.message


def test_path_components_are_percent_encoded_where_a_url_needs_it() -> None:
    assert api_path("drives", "a b", "read", "0", "1k") == "drives/a%20b/read/0/1k"
    assert api_path("drives", "x?y#z") == "drives/x%3Fy%23z"


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [(404, "missing", MissingError), (409, "busy", BusyError), (507, "full", FullError),
     (401, "auth", AuthError), (401, "", AuthError), (400, "usage extra words", UsageError)],
)  # fmt: skip
def test_an_http_error_becomes_the_class_of_its_elastic_error_type(
    status: int, kind: str, error_type: type
) -> None:
    error = error_from_response(status, "Reason", kind, "Some text\n", "http://h/")
    assert type(error) is error_type
    assert error.message.startswith("Some text")
    assert error.status == status


def test_an_http_error_without_an_elastic_type_points_at_ohuri() -> None:
    error = error_from_response(404, "Not Found", "", "<html>", "http://h/")
    assert isinstance(error, HttpError)
    assert "is OHURI the API endpoint?" in error.message


def test_the_environment_gives_the_client_and_a_missing_secret_is_asked_for() -> None:
    asked: list[str] = []

    def ask(user: str) -> str:
        asked.append(user)
        return "s3cret"

    client = client_from_environment({"OHURI": "http://127.0.0.1:1/", "OHAUTH": "u-1"}, ask=ask)
    assert asked == ["u-1"]
    assert client._authorization == basic_authorization("u-1", "s3cret")
    legacy = client_from_environment({"EHURI": "http://h:2/", "EHAUTH": "u:k"})
    assert legacy.endpoint.port == 2
    with pytest.raises(UsageError, match="Please set OHAUTH"):
        client_from_environment({"OHURI": "http://h/"})


def test_requests_of_one_thread_share_one_keep_alive_connection(api: ApiDaemon) -> None:
    client = ApiClient(parse_endpoint(api.url), basic_authorization(api.user, api.secret))
    try:
        client.call("POST", "drives/list")
        first = client._local.connection.sock
        client.call("GET", "drives/list")
        assert client._local.connection.sock is first
        other: list[object] = []

        def in_another_thread() -> None:
            client.call("GET", "drives/list")
            other.append(client._local.connection.sock)
            client.close()

        thread = threading.Thread(target=in_another_thread)
        thread.start()
        thread.join(timeout=30)
        assert other and other[0] is not first
    finally:
        client.close()


class _ClosesAfterEachAnswer(http.server.BaseHTTPRequestHandler):
    """Answers keep-alive style, then closes the connection, as a server's idle timeout does."""

    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
        self.close_connection = True


def test_a_keep_alive_connection_the_server_closed_is_replaced_once() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosesAfterEachAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = ApiClient(parse_endpoint(f"http://127.0.0.1:{server.server_address[1]}/"), "x")
        answers = [client.call("POST", "drives/list", b"") for _ in range(3)]
        client.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert answers == [b"ok\n"] * 3
    assert _ClosesAfterEachAnswer.connections == 3


def test_a_streamed_body_is_sent_with_its_length(api: ApiDaemon) -> None:
    client = ApiClient(parse_endpoint(api.url), basic_authorization(api.user, api.secret))
    try:
        body = io.BytesIO(b"size 3000\nencryption:cipher none\n")
        response = client.request("POST", "drives/create", body, length=len(body.getvalue()))
        assert b"size 3000" in client.read_all(response)
    finally:
        client.close()


def test_errors_of_the_api_and_of_the_connection_raise_our_types(api: ApiDaemon) -> None:
    wrong = ApiClient(parse_endpoint(api.url), basic_authorization(api.user, "wrong"))
    right = ApiClient(parse_endpoint(api.url), basic_authorization(api.user, api.secret))
    nowhere = ApiClient(parse_endpoint(f"http://127.0.0.1:{free_port()}/"), "Basic x")
    try:
        with pytest.raises(AuthError, match="check OHAUTH"):
            wrong.call("GET", "drives/list")
        with pytest.raises(ConnectionFailed, match="connection refused"):
            nowhere.call("GET", "drives/list")
        with pytest.raises(MissingError, match="could not be found"):
            right.call("GET", "drives/00000000-0000-4000-8000-000000000000/info")
        assert right.call("GET", "drives/list") is not None  # the connection is still usable
    finally:
        for client in (wrong, right, nowhere):
            client.close()


class _Answer:
    """An answer whose body is already here, for the decoding step alone."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self, amount: int | None = None) -> bytes:
        return self._body[:amount]


def test_a_gzip_answer_must_inflate_to_exactly_the_length_asked() -> None:
    client = ApiClient(parse_endpoint("http://127.0.0.1:1/"), "Basic x")
    zeros = gzip.compress(bytes(100_000))
    assert client.read_gzip(_Answer(zeros), 100_000) == bytes(100_000)  # type: ignore[arg-type]
    with pytest.raises(FailedError, match="100000 expected"):
        client.read_gzip(_Answer(gzip.compress(bytes(99_999))), 100_000)  # type: ignore[arg-type]
    with pytest.raises(FailedError, match="1001 bytes, 1000 expected"):  # not inflated further
        client.read_gzip(_Answer(zeros), 1000)  # type: ignore[arg-type]
    with pytest.raises(FailedError, match="not valid gzip"):
        client.read_gzip(_Answer(b"plain text"), 10)  # type: ignore[arg-type]
    with pytest.raises(FailedError, match="not one whole gzip member"):
        client.read_gzip(_Answer(zeros[:-8]), 100_000)  # type: ignore[arg-type]


class _BusyAtFirst(http.server.BaseHTTPRequestHandler):
    """Answers 429 `busy` with Retry-After 0 to the first `busy_answers` requests."""

    protocol_version = "HTTP/1.1"
    busy_answers = 0
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        busy = len(self.bodies) <= self.busy_answers
        text = b"Too many drive transfers at once\n" if busy else b"ok\n"
        self.send_response(429 if busy else 200)
        if busy:
            self.send_header("X-Elastic-Error", "busy")
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


def busy_server_answers(
    busy_answers: int, body: bytes | io.BytesIO
) -> tuple[bytes | Exception, list[bytes]]:
    """What a request with `body` gets from a server busy for its first `busy_answers`
    requests, and the bodies the server received."""
    _BusyAtFirst.busy_answers, _BusyAtFirst.bodies = busy_answers, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BusyAtFirst)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = ApiClient(parse_endpoint(f"http://127.0.0.1:{server.server_address[1]}/"), "x")
    try:
        length = len(body.getvalue()) if isinstance(body, io.BytesIO) else None
        answer: bytes | Exception = client.read_all(
            client.request("POST", "drives/D/write/0", body, length=length)
        )
    except BusyError as error:
        answer = error
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return answer, _BusyAtFirst.bodies


def test_a_busy_answer_is_waited_out_and_the_request_sent_again() -> None:
    answer, bodies = busy_server_answers(2, b"chunk")
    assert answer == b"ok\n" and bodies == [b"chunk"] * 3


def test_busy_answers_end_in_the_busy_error_after_the_retries() -> None:
    answer, bodies = busy_server_answers(BUSY_RETRIES + 1, b"chunk")
    assert isinstance(answer, BusyError) and "Too many drive transfers" in answer.message
    assert len(bodies) == BUSY_RETRIES + 1


def test_a_streamed_body_is_not_sent_again() -> None:
    answer, bodies = busy_server_answers(1, io.BytesIO(b"from a file"))
    assert isinstance(answer, BusyError) and bodies == [b"from a file"]


@pytest.mark.parametrize(
    ("header", "seconds"), [("3", 3.0), ("", 1.0), ("soon", 1.0), ("nan", 1.0), ("-5", 0.0),
                            ("86400", MAX_RETRY_AFTER)]
)  # fmt: skip
def test_retry_after_is_read_within_bounds(header: str, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds
