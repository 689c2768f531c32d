"""The wire of a drive byte stream between the control plane and a host agent: one read or one
write of a drive's bytes on a connection of its own to the agent's port, served on both
sides by a thread with a blocking TLS socket (storage/agent_streams.py on the control plane,
agent/drive_streams.py on the agent), so that OpenSSL encrypts and decrypts whole pieces in
C with the GIL released instead of asyncio's TLS layer handling each 16 KiB record in Python.

- The connection starts with `STREAM_PREFACE` in clear (the agent's listener then hands it
  to a thread rather than to its HTTP application), then the same mutual TLS as every call.
- A message is a frame: 4 bytes of length (big-endian), then that many bytes; a JSON
  message is a frame of JSON. The control plane sends the call: the storage call's fields
  (storage/storage_calls.py) with `"action": "read"` or `"write"`.
- A read: the agent answers `{"answer": count}` (or a refusal), then the `count` bytes, and
  closes.
- A write: the control plane sends the bytes as frames of at most `MAX_FRAME`, then an empty
  frame; the agent answers `{"answer": bytes written}` once they are durable. A connection
  that ends before the empty frame is a write given up: the agent aborts it. A refusal
  while the bytes come is sent at once; the agent then reads and drops the rest until the
  control plane, which looks for an answer before each frame, closes.
- A refusal is `{"error": message, "kind": X-Elastic-Error kind}`, as the agent's HTTP
  routes answer one.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import struct
import time
from typing import Any, Protocol

from openhosting.errors import ERROR_TYPES, ApiError, FailedError

STREAM_PREFACE = b"OH-DRIVE-BYTES/1\n"
# Seconds a stream may go without a byte moving, on either side, before it is given up.
STALL_TIMEOUT = 60.0  # its first byte is no TLS record's (0x16)
FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 4 << 20
# A message other than bytes (a call, an answer) is short.
MAX_MESSAGE = 1 << 16
# Socket buffers of a stream: each system call moves more.
SOCKET_BUFFER = 4 << 20
# What a `TlsStream` reads of its socket at once, and encrypts at once.
RAW_READ = 1 << 20
RAW_WRITE = 1 << 20


class ByteStream(Protocol):
    """A connection's two directions, blocking: an `ssl.SSLSocket` or a `TlsStream`."""

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None: ...


class StreamClosed(ConnectionError):
    """The other end closed the connection before what was expected had come."""


def widen_socket_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def time_left(deadline: float) -> float:
    """Seconds until `deadline` (`time.monotonic()`); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("out of time")
    return left


def receive_exactly(sock: ByteStream, view: memoryview) -> None:
    """Fill `view` from `sock` (StreamClosed if it ends first)."""
    filled, size = 0, len(view)
    while filled < size:
        got = sock.recv_into(view[filled:], size - filled)
        if not got:
            raise StreamClosed(f"connection closed after {filled} of {size} bytes")
        filled += got


def receive_frame_length(sock: ByteStream) -> int:
    header = bytearray(FRAME_HEADER.size)
    receive_exactly(sock, memoryview(header))
    length: int = FRAME_HEADER.unpack(header)[0]
    return length


def send_frame(sock: ByteStream, data: bytes | bytearray | memoryview) -> None:
    sock.sendall(FRAME_HEADER.pack(len(data)))
    if data:
        sock.sendall(data)


def send_message(sock: ByteStream, fields: dict[str, Any]) -> None:
    send_frame(sock, json.dumps(fields).encode())


def send_refusal(sock: ByteStream, error: ApiError) -> None:
    send_message(sock, {"error": error.message, "kind": error.kind})


def receive_message(sock: ByteStream, begun: bytes = b"") -> bytes:
    """A message's bytes, `begun` those of it already received (a `ValueError` if it is
    longer than a message may be)."""
    header = bytearray(FRAME_HEADER.size)
    head = begun[: len(header)]
    header[: len(head)] = head
    receive_exactly(sock, memoryview(header)[len(head) :])
    length: int = FRAME_HEADER.unpack(header)[0]
    if length > MAX_MESSAGE:
        raise ValueError(f"a message of {length} bytes")
    message = bytearray(length)
    body = begun[len(header) :][:length]
    message[: len(body)] = body
    receive_exactly(sock, memoryview(message)[len(body) :])
    return bytes(message)


def receive_answer(sock: ByteStream, host: str, begun: bytes = b"") -> Any:
    """The agent's answer (`begun`: its first bytes, already received); its refusal raised
    as the API error it names (naming `host`); ValueError for an answer not understood."""
    fields = json.loads(receive_message(sock, begun))
    if not isinstance(fields, dict):
        raise ValueError("an answer not an object")
    if "error" in fields:
        kind = ERROR_TYPES.get(str(fields.get("kind")), FailedError)
        raise kind(f"{fields['error']} (host {host})")
    return fields["answer"]


def received_early(stream: TlsStream) -> bytes:
    """What the other end has sent so far, without waiting (b"": nothing yet; the TLS
    layer's own messages, such as TLS 1.3's session tickets, are not); StreamClosed if it
    has closed."""
    if not stream.pending() and not select.select([stream.socket], [], [], 0)[0]:
        return b""
    timeout = stream.socket.gettimeout()
    stream.socket.settimeout(0)
    data = bytearray(MAX_MESSAGE)
    try:
        got = stream.recv_into(memoryview(data))
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    finally:
        stream.socket.settimeout(timeout)
    if not got:
        raise StreamClosed("connection closed")
    return bytes(data[:got])


class TlsStream:
    """TLS over a blocking socket with OpenSSL's records kept in memory: the socket is read a
    whole buffer at a time (one system call for many 16 KiB records, where an `SSLSocket`
    makes two per record) and written a whole piece at a time."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """The handshake done over `sock`; by `deadline` (`time.monotonic()`), if given, as a
        whole: a peer sending a byte now and then must not hold it longer (TimeoutError)."""
        self.socket = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._raw = bytearray(RAW_READ)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if deadline is not None:
                    sock.settimeout(time_left(deadline))
                self._fill()
        self._flush()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._tls.getpeercert()

    def pending(self) -> int:
        return self._tls.pending() + self._incoming.pending

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        """Up to `nbytes` (or `len(view)`) bytes into `view`: 0 once the other end closed."""
        while True:
            try:
                return int(self._tls.read(nbytes or len(view), view))  # a count, given a buffer
            except ssl.SSLWantReadError:
                self._flush()  # what the TLS layer answers of its own (TLS 1.3 key updates)
                if not self._fill():
                    return 0
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), RAW_WRITE):
            self._tls.write(view[start : start + RAW_WRITE])
            self._flush()

    def _fill(self) -> bool:
        got = self.socket.recv_into(self._raw)
        if not got:
            self._incoming.write_eof()
            return False
        self._incoming.write(memoryview(self._raw)[:got])
        return True

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.socket.sendall(self._outgoing.read())

    def close(self) -> None:
        self.socket.close()
