"""Abuse limits at the edge: failing logins slow down then lock out, per-user request rates,
drive transfers at once, oversized headers and paths, slow clients (issue: accounts, billing
and security)."""

import asyncio
import base64
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from openhosting.api.abuse import (
    AGGREGATE_SHARE,
    MAX_DELAY,
    AuthLockedOutError,
    AuthThrottle,
    RateLimitedError,
    TransferLimiter,
    UserRateLimiter,
    client_network,
    user_tried,
)
from openhosting.api.context import TRANSFER_LIMITER_KEY
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import open_platform
from openhosting.wire.text import parse_properties
from testbed.daemon_process import DaemonProcess
from tests.conftest import basic_auth, serve_api


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ALICE = "0f3c5a1e-1111-4111-8111-111111111111"
BOB = "0f3c5a1e-2222-4222-8222-222222222222"


def failures(throttle: AuthThrottle, remote: str, user: str | None, times: int) -> list[float]:
    """The delays of `times` failures that are not refused."""
    return [throttle.failed(remote, user) for _ in range(times)]


def test_failures_are_free_then_slower_then_locked_out() -> None:
    clock = FakeClock(100.0)
    throttle = AuthThrottle(free=2, maximum=5, window=60, clock=clock)
    assert failures(throttle, "203.0.113.9", ALICE, 5) == [0.0, 0.0, 0.1, 0.2, 0.4]
    clock.now = 110.0
    with pytest.raises(AuthLockedOutError) as locked:
        throttle.failed("203.0.113.9", ALICE)
    assert locked.value.retry_after == 51
    assert throttle.failed("198.51.100.1", BOB) == 0.0  # others unaffected
    clock.now = 161.0
    assert throttle.failed("203.0.113.9", ALICE) == 0.0  # the window ended


def test_a_locked_pair_leaves_the_address_other_users_and_the_user_elsewhere_alone() -> None:
    throttle = AuthThrottle(free=2, maximum=4, window=60, clock=FakeClock())
    failures(throttle, "192.0.2.7", ALICE, 4)
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.7", ALICE)
    # Behind the same NAT, another user's typo is an ordinary failure, neither slowed nor
    # refused; and so is one on the same user from elsewhere.
    assert throttle.failed("192.0.2.7", BOB) == 0.0
    assert throttle.failed("198.51.100.3", ALICE) == 0.0


def test_refused_attempts_keep_counting_so_no_success_or_pause_clears_them() -> None:
    clock = FakeClock(0.0)
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=clock)
    failures(throttle, "192.0.2.7", ALICE, 2)
    for second in range(10):  # a guesser that keeps going while locked out
        clock.now = float(second)
        with pytest.raises(AuthLockedOutError):
            throttle.failed("192.0.2.7", ALICE)
    assert len(throttle.users) == 1 and len(throttle.pairs) == 1


def test_one_user_guessed_from_many_addresses_is_slowed_then_refused() -> None:
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    # Each address fails once (within a pair's free allowance); the user's failures add up:
    # the aggregate allows AGGREGATE_SHARE times a pair's.
    delays = [throttle.failed(f"198.51.100.{n}", ALICE) for n in range(1, 9)]
    assert delays == [0.0] * AGGREGATE_SHARE + [0.1, 0.2, 0.4, 0.8]
    with pytest.raises(AuthLockedOutError):
        throttle.failed("198.51.100.99", ALICE)
    assert throttle.failed("198.51.100.99", BOB) == 0.0


def test_one_address_guessing_many_users_is_slowed_then_refused() -> None:
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    users = [f"0f3c5a1e-0000-4000-8000-{n:012d}" for n in range(8)]
    delays = [throttle.failed("192.0.2.7", user) for user in users]
    assert delays == [0.0] * AGGREGATE_SHARE + [0.1, 0.2, 0.4, 0.8]
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.7", ALICE)
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.7", None)  # a malformed header from there too
    assert throttle.failed("192.0.2.8", ALICE) == 0.0


def test_malformed_credentials_count_for_their_address() -> None:
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    assert failures(throttle, "192.0.2.7", None, 8)[-1] > 0
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.7", None)
    assert throttle.failed("192.0.2.8", None) == 0.0


def test_a_user_is_one_user_whatever_the_case_of_its_uuid() -> None:
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    throttle.failed("192.0.2.7", ALICE)
    throttle.failed("192.0.2.7", ALICE.upper())
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.7", ALICE.title())


def test_names_that_match_no_account_count_for_their_address_only() -> None:
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    for n in range(3):
        throttle.failed(f"192.0.2.{n}", "x" * 8000)
    assert len(throttle.users) == 0 and len(throttle.pairs) == 0
    assert len(throttle.addresses) == 3
    assert user_tried("x" * 36) is None
    assert user_tried(ALICE.upper()) == ALICE


def test_an_ipv6_client_is_counted_by_its_slash_64() -> None:
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:ffff::9")
    assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_network("-") == "-"
    throttle = AuthThrottle(free=1, maximum=2, window=60, clock=FakeClock())
    throttle.failed("2001:db8:1:2::1", ALICE)
    throttle.failed("2001:db8:1:2::2", ALICE)
    with pytest.raises(AuthLockedOutError):
        throttle.failed("2001:db8:1:2::3", ALICE)


def test_tables_stay_bounded_and_a_user_under_steady_guessing_stays_counted() -> None:
    throttle = AuthThrottle(free=1, maximum=20, window=60, clock=FakeClock(), max_tracked=4)
    guesses = 0
    for n in range(60):  # cycling addresses and names to push the victim out of the tables
        throttle.failed(f"198.51.100.{n}", f"0f3c5a1e-0000-4000-8000-{n:012d}")
        assert len(throttle.pairs) <= 4 and len(throttle.users) <= 4
        assert len(throttle.addresses) <= 4
        if n % 3 == 0 and guesses < 20:
            throttle.failed("192.0.2.1", ALICE)
            guesses += 1
    with pytest.raises(AuthLockedOutError):
        throttle.failed("192.0.2.1", ALICE)


def test_delays_stay_capped_however_long_the_guessing() -> None:
    clock = FakeClock(0.0)
    throttle = AuthThrottle(free=1, maximum=100_000, window=10**9, clock=clock)
    assert failures(throttle, "192.0.2.7", ALICE, 5000)[-1] == MAX_DELAY


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
    yield await serve_api(aiohttp_client, platform), key
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
    locked = await client.get("/drives/list", headers=basic_auth(key, "wrong"))
    assert locked.status == 401
    assert locked.headers["X-Elastic-Error"] == "auth"
    assert int(locked.headers["Retry-After"]) > 0
    owner = await client.get("/drives/list", headers=basic_auth(key))
    assert owner.status == 200  # the right key is never locked out


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


@pytest.fixture
async def guarded_client(  # type: ignore[no-untyped-def]
    aiohttp_client, config: Config
) -> AsyncIterator[tuple[TestClient, NewKey, NewKey]]:
    """A daemon allowing one free failure and two in all per (address, user): four and
    eight per user and per address. Its users: alice, and mallory who guesses."""
    api = dataclasses.replace(config.api, auth_failures_free=1, auth_failures_max=2)
    platform = open_platform(dataclasses.replace(config, api=api))
    alice, mallory = platform.accounts.create_user("alice"), platform.accounts.create_user("m")
    yield await serve_api(aiohttp_client, platform), alice, mallory
    platform.close()


async def get_from(client: TestClient, address: str, headers: dict[str, str]) -> ClientResponse:
    """A request sent to the test server from another loopback address."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://{client.server.host}:{client.server.port}/drives/list"
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response


async def test_a_valid_login_between_guesses_does_not_clear_them(
    guarded_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    """Issue 13: one valid request every four bad ones reset the address's count, so 60
    wrong keys went through in 0.07 s with no delay and no lockout."""
    client, alice, mallory = guarded_client
    bad = []
    started = time.monotonic()
    for _ in range(3):
        own = await client.get("/drives/list", headers=basic_auth(mallory))
        assert own.status == 200
        for _ in range(4):
            bad.append(await client.get("/drives/list", headers=basic_auth(alice, "guess")))
    assert [response.status for response in bad] == [401] * 12
    assert time.monotonic() - started >= 0.1  # the second guess was slowed
    assert "Retry-After" not in bad[0].headers
    assert all(int(response.headers["Retry-After"]) > 0 for response in bad[2:])


async def test_guessing_from_a_shared_address_locks_out_only_the_guesses(
    guarded_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    """Behind one NAT: mallory's guesses on alice are refused; alice with her key, and
    another user with theirs (or a typo of theirs) are not."""
    client, alice, mallory = guarded_client
    for _ in range(3):
        await client.get("/drives/list", headers=basic_auth(alice, "guess"))
    refused = await client.get("/drives/list", headers=basic_auth(alice, "guess"))
    assert refused.status == 401 and "Retry-After" in refused.headers
    assert (await client.get("/drives/list", headers=basic_auth(alice))).status == 200
    assert (await client.get("/drives/list", headers=basic_auth(mallory))).status == 200
    typo = await client.get("/drives/list", headers=basic_auth(mallory, "typo"))
    assert typo.status == 401 and "Retry-After" not in typo.headers


async def test_one_user_guessed_from_many_addresses_is_refused_but_its_owner_is_not(
    guarded_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    client, alice, _ = guarded_client
    guesses = [
        await get_from(client, f"127.0.0.{10 + n}", basic_auth(alice, "guess")) for n in range(8)
    ]
    assert [response.status for response in guesses] == [401] * 8
    assert not any("Retry-After" in response.headers for response in guesses)
    refused = await get_from(client, "127.0.0.30", basic_auth(alice, "guess"))
    assert refused.status == 401 and int(refused.headers["Retry-After"]) > 0
    assert (await get_from(client, "127.0.0.10", basic_auth(alice))).status == 200
    assert (await get_from(client, "127.0.0.31", basic_auth(alice))).status == 200


async def test_requests_without_credentials_are_never_slowed(
    guarded_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    """Clients that wait for the 401 challenge before sending credentials (urllib's
    HTTPBasicAuthHandler, Java's Authenticator) send every first request without any."""
    client, alice, _ = guarded_client
    started = time.monotonic()
    for _ in range(20):
        response = await client.get("/drives/list")
        assert response.status == 401 and "Retry-After" not in response.headers
        assert (await client.get("/drives/list", headers=basic_auth(alice))).status == 200
    assert time.monotonic() - started < 2


async def test_malformed_credentials_from_one_address_are_slowed_then_refused(
    guarded_client: tuple[TestClient, NewKey, NewKey],
) -> None:
    client, alice, _ = guarded_client
    garbage = {"Authorization": "Basic !!!"}
    answers = [await client.get("/drives/list", headers=garbage) for _ in range(9)]
    assert [response.status for response in answers] == [401] * 9
    assert "Retry-After" not in answers[7].headers
    assert int(answers[8].headers["Retry-After"]) > 0
    assert (await client.get("/drives/list", headers=basic_auth(alice))).status == 200


async def test_a_failed_login_is_logged_on_one_line_that_the_client_cannot_forge(
    guarded_client: tuple[TestClient, NewKey, NewKey], caplog: pytest.LogCaptureFixture
) -> None:
    client, alice, _ = guarded_client
    caplog.set_level(logging.INFO, logger="openhosting.auth")
    forged_path = "/drives/x%0Aevent=auth_ok%20remote=192.0.2.1/list"
    await client.get(forged_path, headers=basic_auth(alice, "guess"))
    forged_user = base64.b64encode(b"x\nevent=auth_ok remote=192.0.2.1:guess").decode()
    await client.get("/drives/list", headers={"Authorization": "Basic " + forged_user})
    lines = [record.getMessage() for record in caplog.records if record.name == "openhosting.auth"]
    assert len(lines) == 2
    assert not any("\n" in line for line in lines)
    assert f"user={alice.uuid} " in lines[0] and "%0A" in lines[0]
    assert "user=- " in lines[1]


async def test_a_request_expecting_100_continue_is_counted_once_by_the_rate_limit(
    strict_client: tuple[TestClient, NewKey],
) -> None:
    """The Expect handler authenticates before the body; the request is not authenticated
    (nor charged to its user's rate) a second time after it."""
    client, key = strict_client
    statuses = [
        (
            await client.post(
                "/drives/create", data="size 1M\n", headers=basic_auth(key), expect100=True
            )
        ).status
        for _ in range(4)
    ]
    assert statuses == [200] * 4  # the burst is 4


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
    yield await serve_api(aiohttp_client, platform), alice, bob
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
