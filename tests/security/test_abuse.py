"""Abuse limits at the edge: failing logins slow down then lock out, per-user request rates,
drive transfers at once, oversized headers and paths, slow clients (issue: accounts, billing
and security)."""

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from openhosting.api.abuse import (
    AuthLockedOutError,
    AuthThrottle,
    RateLimitedError,
    TransferLimiter,
    UserRateLimiter,
)
from openhosting.api.app import RUNNER_OPTIONS, build_app
from openhosting.api.context import TRANSFER_LIMITER_KEY
from openhosting.api.handlers import HANDLERS
from openhosting.config import Config
from openhosting.services.accounts import NewKey
from openhosting.services.platform import open_platform
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth
from tests.daemon_process import DaemonProcess


def test_failures_are_free_then_slower_then_locked_out() -> None:
    throttle = AuthThrottle(free=2, maximum=5, window=60)
    delays = []
    for _ in range(5):
        delays.append(throttle.delay_before("203.0.113.9", now=100.0))
        throttle.failed("203.0.113.9", now=100.0)
    assert delays == [0.0, 0.0, 0.1, 0.2, 0.4]
    with pytest.raises(AuthLockedOutError) as locked:
        throttle.delay_before("203.0.113.9", now=110.0)
    assert locked.value.retry_after == 51
    assert throttle.delay_before("198.51.100.1", now=110.0) == 0.0  # others unaffected
    assert throttle.delay_before("203.0.113.9", now=161.0) == 0.0  # the window ended


def test_a_success_clears_the_failures() -> None:
    throttle = AuthThrottle(free=1, maximum=3, window=60)
    throttle.failed("a", now=0.0)
    throttle.failed("a", now=0.0)
    throttle.succeeded("a")
    assert throttle.delay_before("a", now=0.0) == 0.0


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = UserRateLimiter(rate=2)
    for _ in range(8):
        limiter.take("u", now=0.0)
    with pytest.raises(RateLimitedError) as limited:
        limiter.take("u", now=0.0)
    assert limited.value.retry_after >= 1
    limiter.take("u", now=0.5)  # one more token after half a second at 2/s
    limiter.take("other", now=0.5)
    UserRateLimiter(rate=0).take("u")  # off


@pytest.fixture
async def strict_client(aiohttp_client, config: Config) -> AsyncIterator[tuple[TestClient, NewKey]]:  # type: ignore[no-untyped-def]
    api = dataclasses.replace(
        config.api, auth_failures_free=2, auth_failures_max=4, user_requests_per_second=1
    )
    platform = open_platform(dataclasses.replace(config, api=api))
    key = platform.accounts.create_user("alice")
    server = TestServer(build_app(platform, HANDLERS))
    await server.start_server(**RUNNER_OPTIONS)
    yield await aiohttp_client(server), key
    platform.close()


async def test_repeated_failures_end_in_401_with_retry_after(
    strict_client: tuple[TestClient, NewKey],
) -> None:
    client, key = strict_client
    started = time.monotonic()
    for _ in range(4):
        response = await client.get("/drives/list", headers=basic_auth(key, "wrong"))
        assert response.status == 401
    assert time.monotonic() - started >= 0.3  # the 3rd and 4th attempts were slowed
    locked = await client.get("/drives/list", headers=basic_auth(key))
    assert locked.status == 401  # even the right key, while locked out
    assert locked.headers["X-Elastic-Error"] == "auth"
    assert int(locked.headers["Retry-After"]) > 0


async def test_requests_over_the_users_rate_are_429_busy(
    strict_client: tuple[TestClient, NewKey],
) -> None:
    client, key = strict_client
    statuses = [
        (await client.get("/drives/list", headers=basic_auth(key))).status for _ in range(6)
    ]
    assert statuses[:4] == [200] * 4
    assert 429 in statuses[4:]
    response = await client.get("/drives/list", headers=basic_auth(key))
    assert response.status == 429
    assert response.headers["X-Elastic-Error"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_oversized_headers_and_paths_and_slow_clients_against_the_daemon(tmp_path: Path) -> None:
    env = {"OH_API_IDLE_TIMEOUT": "2"}
    daemon = DaemonProcess(tmp_path / "state", tmp_path / "daemon.log", env=env)
    try:
        long_path = b"/drives/" + b"x" * 9000
        answer = raw_request(daemon.port, b"GET " + long_path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer.split(b"\r\n")[0].split()[1] in (b"400", b"414")
        big_header = b"X-Big: " + b"y" * 9000 + b"\r\n"
        answer = raw_request(
            daemon.port, b"GET /drives/list HTTP/1.1\r\nHost: a\r\n" + big_header + b"\r\n"
        )
        assert answer.split(b"\r\n")[0].split()[1].startswith(b"4")
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        answer = raw_request(daemon.port, b"GET /drives/list HTTP/1.1\r\n" + many + b"\r\n")
        assert answer.split(b"\r\n")[0].split()[1].startswith(b"4")

        # A slow loris: headers trickle in and never end; the daemon hangs up.
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as slow:
            slow.sendall(b"GET /drives/list HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8:
                try:
                    slow.sendall(b"X-a: b\r\n")
                    slow.settimeout(0.5)
                    if slow.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed, "the daemon kept a never-ending request open"
            assert time.monotonic() - started < 6
    finally:
        daemon.stop()


def test_transfers_are_capped_per_user_and_on_the_host() -> None:
    limiter = TransferLimiter(per_user=2, total=3)
    with limiter.admit("a"), limiter.admit("a"):
        with pytest.raises(RateLimitedError, match="at most 2 per account"), limiter.admit("a"):
            pass
        with (
            limiter.admit("b"),
            pytest.raises(RateLimitedError, match="too many drive transfers"),
            limiter.admit("c"),
        ):
            pass
        with limiter.admit("c"):  # b's ended: room again
            pass
    with limiter.admit("a"), limiter.admit("a"):  # a's ended, even the refused one
        pass
    unlimited = TransferLimiter(per_user=0, total=0)
    with unlimited.admit("a"), unlimited.admit("a"), unlimited.admit("a"):
        pass


@pytest.fixture
async def capped_client(  # type: ignore[no-untyped-def]
    aiohttp_client, config: Config
) -> AsyncIterator[tuple[TestClient, NewKey, NewKey]]:
    api = dataclasses.replace(config.api, max_transfers_per_user=2, max_transfers=3)
    platform = open_platform(dataclasses.replace(config, api=api))
    alice, bob = platform.accounts.create_user("alice"), platform.accounts.create_user("bob")
    server = TestServer(build_app(platform, HANDLERS))
    await server.start_server(**RUNNER_OPTIONS)
    yield await aiohttp_client(server), alice, bob
    platform.close()


async def new_drive(client: TestClient, key: NewKey) -> str:
    response = await client.post("/drives/create", data="size 1M\n", headers=basic_auth(key))
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())["drive"]


async def test_drive_transfers_over_the_cap_are_429_busy_until_one_ends(
    capped_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    client, alice, bob = capped_client
    drives = [await new_drive(client, alice) for _ in range(3)]
    theirs = await new_drive(client, bob)
    go_on = asyncio.Event()

    async def stalled_body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.wait_for(go_on.wait(), 30)
        yield b"y" * 1000

    def stalled_write(drive: str, key: NewKey) -> asyncio.Task[ClientResponse]:
        headers = {**basic_auth(key), "Content-Length": "2000"}
        return asyncio.create_task(
            client.post(f"/drives/{drive}/write", data=stalled_body(), headers=headers)
        )

    async def under_way(count: int) -> None:
        limiter = client.server.app[TRANSFER_LIMITER_KEY]  # type: ignore[union-attr]
        for _ in range(300):
            if limiter.under_way == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} transfers never got under way")

    writes = [stalled_write(drives[0], alice), stalled_write(drives[1], alice)]
    await under_way(2)
    refused = await client.get(f"/drives/{drives[2]}/read", headers=basic_auth(alice))
    assert refused.status == 429
    assert refused.headers["X-Elastic-Error"] == "busy"
    assert refused.headers["Retry-After"] == "1"
    assert "at most 2 per account" in await refused.text()
    writes.append(stalled_write(theirs, bob))  # another account: room on the host
    await under_way(3)
    full = await client.get(f"/drives/{theirs}/read", headers=basic_auth(bob))
    assert full.status == 429  # the host's cap
    go_on.set()
    for write in writes:
        assert (await write).status == 204
    read = await client.get(f"/drives/{drives[0]}/read/0/2000", headers=basic_auth(alice))
    assert read.status == 200 and await read.read() == b"x" * 1000 + b"y" * 1000
