"""Strangers on an agent's port, with no certificate (anyone who can reach it): the threads of
the drive byte streams (agent/drive_streams.py) are taken before the handshake, so a stranger
must not keep them. A connection gets its preface and TLS handshake done within the
handshake's time as a whole (a byte every few seconds no longer holds one for ever), and
the connections of one address that have not proved themselves yet are few: one address
filling them leaves the control plane's streams served. A real agent on loopback; the
stranger connects from 127.0.0.2, the control plane from 127.0.0.1."""

import asyncio
import contextlib
import select
import socket
import ssl
import time
import uuid
from collections.abc import Iterator

from openhosting.agent.drive_streams import HANDSHAKE_TIMEOUT, MAX_PENDING_PER_ADDRESS
from openhosting.storage.stream_wire import STREAM_PREFACE
from testbed.agent_process import AgentProcess, Cluster
from tests.agent.test_agent_storage import MIB, read, storage_of, write

STRANGER = "127.0.0.2"


def _stranger(agent: AgentProcess) -> socket.socket:
    host, _, port = agent.address.rpartition(":")
    connection = socket.socket()
    connection.bind((STRANGER, 0))
    connection.connect((host, int(port)))
    return connection


def _closed_by_agent(connection: socket.socket) -> bool:
    if not select.select([connection], [], [], 0)[0]:
        return False
    try:
        return connection.recv(1) == b""
    except ConnectionError:
        return True


def _client_hello() -> bytes:
    """The first flight of a TLS 1.3 client with no certificate: a well-formed handshake's
    bytes, which the agent waits for the rest of."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="hv-a")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@contextlib.contextmanager
def _strangers(agent: AgentProcess, count: int) -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            made.append(_stranger(agent))
            made[-1].sendall(STREAM_PREFACE)  # to a stream's thread, then silent in its handshake
        yield made
    finally:
        for connection in made:
            connection.close()


def test_a_stranger_sending_a_byte_at_a_time_is_dropped_within_the_handshakes_time(
    agent_a: AgentProcess,
) -> None:
    connection = _stranger(agent_a)
    try:
        started = time.monotonic()
        closed_at = None
        for byte in (STREAM_PREFACE + _client_hello())[:40]:  # bounded: 40 bytes, 0.5 s apart
            if _closed_by_agent(connection):
                closed_at = time.monotonic() - started
                break
            with contextlib.suppress(OSError):
                connection.send(bytes([byte]))
            time.sleep(0.5)
        # Each byte came within the handshake's time of the one before: the thread was held
        # as long as they came (the whole 20 s here).
        assert closed_at is not None and closed_at < HANDSHAKE_TIMEOUT + 3
    finally:
        connection.close()


def test_one_address_filling_the_unproved_streams_leaves_the_control_planes_served(
    agent_a: AgentProcess, cluster: Cluster
) -> None:
    with _strangers(agent_a, 300) as strangers:  # more than the agent's threads (256)

        async def scenario() -> None:
            storage = storage_of(agent_a, cluster)
            try:
                drive = str(uuid.uuid4())
                await storage.create(drive, "disk", MIB, None)
                assert await write(storage, drive, b"served" * 100) == 600
                assert await read(storage, drive, 0, 600) == b"served" * 100
                await storage.destroy(drive, "disk")
            finally:
                await storage.close()

        time.sleep(0.5)  # the agent has taken them
        asyncio.run(scenario())
        # The address's others were closed at once.
        refused: set[socket.socket] = set()
        for _ in range(50):  # bounded: 5 s for the agent to take them all
            refused |= {c for c in strangers if c not in refused and _closed_by_agent(c)}
            if len(refused) >= 300 - MAX_PENDING_PER_ADDRESS:
                break
            time.sleep(0.1)
        assert len(refused) >= 300 - MAX_PENDING_PER_ADDRESS
