"""The info of thousands of objects (`drives/info` of 10,000 drives, `servers/info` of 5,000,
`resources/info` of 10,000) is built and rendered off the event loop: a small request sent
while one is being built is answered long before it, not after it (services/off_loop.py).

The objects are rows put straight into the platform's real SQLite database (making 10,000
drive files through the API would take minutes); the requests come over real sockets from
threads, so the client never waits on the loop it measures."""

import asyncio
import concurrent.futures
import http.client
import time
import uuid as uuid_module
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import insert

from openhosting.model.drive import DriveSettings
from openhosting.model.resource import ResourceSettings
from openhosting.model.server import ServerConfig
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store.records import (
    drive_settings_columns,
    encode_server_config,
    resource_settings_columns,
)
from openhosting.store.tables import drives, resources, servers
from openhosting.wire.text import parse_properties_list
from tests.conftest import basic_auth

DRIVES = 10_000
SERVERS = 5_000
RESOURCES = 10_000
# The small request starts this long after the big one, so the big one is being built.
HEAD_START = 0.05

Answer = tuple[float, float, int, bytes]  # sent, answered (time.monotonic), status, body


def _fill(platform: Platform, user: str) -> None:
    now = time.time()
    drive_columns = drive_settings_columns(DriveSettings(cipher="none"))
    resource_columns = resource_settings_columns(ResourceSettings())
    with platform.engine.begin() as connection:
        connection.execute(
            insert(drives),
            [
                {**drive_columns, "uuid": str(uuid_module.uuid4()), "user": user,
                 "cipher": "none", "created_at": now + index / 1e6, "name": f"d{index}"}
                for index in range(DRIVES)
            ],
        )  # fmt: skip
        connection.execute(
            insert(servers),
            [
                {"uuid": str(uuid_module.uuid4()), "user": user, "status": "stopped",
                 "created_at": now + index / 1e6,
                 "config": encode_server_config(ServerConfig.from_properties(
                     {"name": f"s{index}", "cpu": "500", "mem": "64"}
                 ))}
                for index in range(SERVERS)
            ],
        )  # fmt: skip
        connection.execute(
            insert(resources),
            [
                {**resource_columns, "type": "vlan", "resource": str(uuid_module.uuid4()),
                 "user": user, "created_at": int(now)}
                for _ in range(RESOURCES)
            ],
        )  # fmt: skip


def _timed_get(port: int, path: str, headers: dict[str, str]) -> Callable[[], Answer]:
    """A GET to run in a thread: (sent, answered, status, body), times by time.monotonic."""

    def get() -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            sent = time.monotonic()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            return sent, time.monotonic(), response.status, body
        finally:
            connection.close()

    return get


def _big_then_small(
    big_get: Callable[[], Answer], small_get: Callable[[], Answer]
) -> tuple[Answer, Answer]:
    """The big request, and the small one HEAD_START later while it is under way."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(big_get)
        time.sleep(HEAD_START)
        small = small_get()
        return big.result(timeout=60), small


@pytest.mark.parametrize(
    ("path", "count"),
    [("/drives/info", DRIVES), ("/servers/info", SERVERS), ("/resources/info", RESOURCES)],
)
async def test_a_small_request_is_not_held_behind_a_big_info(
    client: TestClient,
    platform: Platform,
    user: NewKey,
    other_user: NewKey,
    path: str,
    count: int,
) -> None:
    _fill(platform, user.uuid)
    port = client.server.port
    assert port is not None
    big_get = _timed_get(port, path, basic_auth(user))
    small_get = _timed_get(port, "/drives/list", basic_auth(other_user))
    # Its key checked once before (a key derivation of tens of ms, in a worker thread): what
    # is timed is the listing, not a login that may take longer than the big answer itself.
    assert (await asyncio.to_thread(small_get))[2] == 200
    # Both from threads of their own: the loop under test serves them and nothing else.
    (big_sent, big_answered, big_status, big_body), small = await asyncio.to_thread(
        _big_then_small, big_get, small_get
    )
    small_sent, small_answered, small_status, _ = small
    assert big_status == 200 and small_status == 200
    assert len(parse_properties_list(big_body.decode())) == count
    # Sent while the big one was under way: else the test would show nothing.
    assert big_sent < small_sent < big_answered
    # Not a speed figure: held behind the big one (the loop busy building it), the small
    # request would be answered after it. (A ratio of their durations was too tight when
    # the other test worker boots guests beside this one: the GIL is shared with the
    # thread building the big answer.)
    assert small_answered < big_answered
