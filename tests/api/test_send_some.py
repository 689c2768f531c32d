"""`send_some`: a worker thread's send on a duplicate of the event loop's socket, which gives
up after its patience when the client takes nothing, and leaves the socket non-blocking."""

import os
import socket
import threading
import time

import pytest

from openhosting.api.socket_takeover import send_some

MIB = 1 << 20


def test_all_is_sent_to_a_reading_client_and_the_loops_socket_stays_non_blocking() -> None:
    ours, client = socket.socketpair()
    ours.setblocking(False)  # as the event loop keeps it
    received = bytearray()

    def read_all() -> None:
        while len(received) < 8 * MIB and (piece := client.recv(MIB)):
            received.extend(piece)

    reader = threading.Thread(target=read_all)
    reader.start()
    data = os.urandom(8 * MIB)
    with ours, client, socket.socket(fileno=os.dup(ours.fileno())) as duplicate:
        assert send_some(duplicate, memoryview(data), patience=5) == len(data)
        reader.join(timeout=10)
        assert bytes(received) == data
        assert ours.getblocking() is False
        with pytest.raises(BlockingIOError):
            ours.recv(1)  # nothing to read: the original would have blocked otherwise


def test_a_client_taking_nothing_gets_what_its_buffers_hold_after_the_patience() -> None:
    ours, client = socket.socketpair()
    ours.setblocking(False)
    with ours, client, socket.socket(fileno=os.dup(ours.fileno())) as duplicate:
        started = time.monotonic()
        sent = send_some(duplicate, memoryview(bytes(64 * MIB)), patience=0.2)
        waited = time.monotonic() - started
    assert 0 < sent < 64 * MIB  # the socket's buffers, not the whole body
    assert 0.2 <= waited < 2


def test_a_client_gone_is_a_connection_error() -> None:
    ours, client = socket.socketpair()
    ours.setblocking(False)
    client.close()
    with (
        ours,
        socket.socket(fileno=os.dup(ours.fileno())) as duplicate,
        pytest.raises(ConnectionError),
    ):
        send_some(duplicate, memoryview(bytes(MIB)), patience=1)
