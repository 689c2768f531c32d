"""A response's socket taken over for a thread to send the body (api/socket_takeover.py), on
a real aiohttp server and real loopback sockets: what the transport held is sent before the
thread's bytes, the connection serves its next request afterwards, and a client that goes
mid-body fails the thread's send and has the connection closed."""

import asyncio
import http.client
import socket

from aiohttp import web
from aiohttp.test_utils import TestServer

from openhosting.api.socket_takeover import taken_over

MIB = 1 << 20
BLOCK = bytes(index % 251 for index in range(MIB + 251))


def pattern(offset: int, length: int) -> bytes:
    """`length` bytes of a body from `offset` (at most a MiB): byte i is i mod 251."""
    return BLOCK[offset % 251 : offset % 251 + length]


def send_pattern(client: socket.socket, offset: int, end: int) -> None:
    client.settimeout(10)
    while offset < end:
        piece = pattern(offset, min(MIB, end - offset))
        client.sendall(piece)
        offset += len(piece)


class Body:
    """A handler whose body's first `written` bytes go through the transport, the rest from
    a thread on the taken-over socket; what the thread's send raised is kept."""

    def __init__(self) -> None:
        self.failures: list[BaseException] = []
        self.transports: list[asyncio.Transport] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        count, written = int(request.match_info["count"]), int(request.match_info["written"])
        response = web.StreamResponse()
        response.content_length = count
        writer = await response.prepare(request)
        assert writer is not None and request.transport is not None
        self.transports.append(request.transport)
        # Handed to the transport at once: what the socket does not take stays in its
        # buffer, to be sent before any byte of the thread's.
        request.transport.write(
            b"".join(pattern(at, min(MIB, written - at)) for at in range(0, written, MIB))
        )
        try:
            async with taken_over(request, writer, count - written) as client:
                await asyncio.to_thread(send_pattern, client, written, count)
        except OSError as error:
            self.failures.append(error)
            return response  # the connection is closed: nothing more is sent
        await response.write_eof()
        return response


async def serve(body: Body) -> TestServer:
    app = web.Application()
    app.router.add_get("/body/{count}/{written}", body.handle)
    server = TestServer(app)
    await server.start_server()
    return server


def get_twice(port: int, first: str, second: str) -> tuple[bytes, bytes, bool]:
    """Both bodies, read on one connection, and whether it stayed the same socket."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", first)
        one = connection.getresponse().read()
        used = connection.sock
        connection.request("GET", second)
        two = connection.getresponse().read()
        return one, two, connection.sock is used
    finally:
        connection.close()


def read_then_go(port: int, path: str, count: int) -> None:
    """Ask for `path`, read `count` bytes and close, the rest unread."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < count:
            received += len(sock.recv(MIB))
    # Closed with bytes unread: the server's next send is reset.


async def test_the_threads_bytes_follow_what_the_transport_held_and_the_connection_goes_on() -> (
    None
):
    body = Body()
    server = await serve(body)
    try:
        # 32 MiB written through the transport first (most still in its buffer as the
        # socket is taken over), then 16 MiB and a bit from the thread.
        count = 48 * MIB + 999
        one, two, same = await asyncio.to_thread(
            get_twice, server.port, f"/body/{count}/{32 * MIB}", "/body/5000/0"
        )
    finally:
        await server.close()
    assert len(one) == count and all(
        one[start : start + MIB] == pattern(start, min(MIB, count - start))
        for start in range(0, count, MIB)
    )
    assert two == pattern(0, 5000) and same
    assert body.failures == []


async def test_a_client_gone_mid_body_fails_the_threads_send_and_closes_the_connection() -> None:
    body = Body()
    server = await serve(body)
    try:
        await asyncio.to_thread(read_then_go, server.port, f"/body/{1 << 30}/0", 4 * MIB)
        for _ in range(100):
            if body.failures:
                break
            await asyncio.sleep(0.05)
        assert len(body.failures) == 1 and isinstance(body.failures[0], ConnectionError)
        assert body.transports[0].is_closing()
    finally:
        await server.close()
