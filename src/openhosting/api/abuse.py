"""Slowing down abuse at the edge: repeated authentication failures, (optionally) too many
requests from one user, and too many drive transfers at once.

In memory, per daemon, bounded: an attacker cycling addresses or user names can fill the
tables, but then the entries that failed longest ago go first and memory stays flat.
"""

import ipaddress
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from openhosting.errors import AuthError, BusyError

MAX_TRACKED = 65536
MAX_DELAY = 5.0
# The aggregates (one user from every address, one address for every user) sum the failures
# of many pairs, honest typos of many people among them: they allow this many times a pair's
# failures, so that a guesser on one pair meets its own limit first.
AGGREGATE_SHARE = 4
# Seconds a refused transfer is told to wait: transfers last seconds, not minutes.
TRANSFER_RETRY_AFTER = 1
# A user name that can match an account: a UUID (compared lower-case, as authentication does).
_USER_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RateLimitedError(BusyError):
    """Too many requests: 429, with the API's `busy` type and a Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthLockedOutError(AuthError):
    """A failed login on a user or from an address that failed too often: 401 with a
    Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def client_network(remote: str) -> str:
    """The address failures are counted under: an IPv4 address (also when IPv4-mapped), or
    the /64 of an IPv6 one, since one customer's link usually holds a whole /64 and could
    otherwise take a fresh address for every guess."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def user_tried(username: str | None) -> str | None:
    """The user a failed login was aimed at, or None when the name can match no account (it
    then counts for its address only, and its length cannot swell the tables)."""
    if username is None:
        return None
    lowered = username.lower()
    return lowered if _USER_UUID.fullmatch(lowered) else None


@dataclass
class _Failures:
    count: int
    window_start: float


class _FailureCounts:
    """Failures per key within a fixed window: the first `free` cost nothing, then each
    waits longer, and past `maximum` the key is locked until its window ends."""

    def __init__(self, free: int, maximum: int, window: float, max_tracked: int) -> None:
        self._free, self._max, self._window = free, maximum, window
        self._max_tracked = max_tracked
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _current(self, key: str, now: float) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and now - entry.window_start > self._window:
            del self._failures[key]
            return None
        return entry

    def locked_for(self, key: str, now: float) -> int:
        """Seconds until `key`'s lockout ends (at least 1); 0 if it is not locked out."""
        entry = self._current(key, now)
        if entry is None or entry.count < self._max:
            return 0
        return max(1, int(entry.window_start + self._window - now) + 1)

    def delay(self, key: str, now: float) -> float:
        """Seconds the next failure of `key` waits before its answer."""
        entry = self._current(key, now)
        if entry is None or entry.count < self._free:
            return 0.0
        return min(MAX_DELAY, 0.1 * 2 ** min(entry.count - self._free, 16))

    def record(self, key: str, now: float) -> None:
        entry = self._current(key, now)
        if entry is None:
            self._failures[key] = _Failures(1, now)
            while len(self._failures) > self._max_tracked:
                self._failures.popitem(last=False)
        else:
            entry.count += 1
            # Least recently failed first out: a user under steady guessing stays counted
            # however many other names the guesser cycles through.
            self._failures.move_to_end(key)


class AuthThrottle:
    """Counts failed logins per (address, user tried), per user tried and per address
    (OWASP's Authentication Cheat Sheet), and slows then refuses further failures.

    Only failures are ever counted, slowed or refused: the caller verifies the credentials
    first, and the right key always gets in, whoever else is guessing from the same address
    or at the same user. A success resets nothing, so a guesser cannot clear its count by
    logging in to an account of its own, nor by waiting for the owner to log in.
    """

    def __init__(
        self,
        free: int,
        maximum: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._clock = clock
        self.pairs = _FailureCounts(free, maximum, window, max_tracked)
        self.users = _FailureCounts(
            free * AGGREGATE_SHARE, maximum * AGGREGATE_SHARE, window, max_tracked
        )
        self.addresses = _FailureCounts(
            free * AGGREGATE_SHARE, maximum * AGGREGATE_SHARE, window, max_tracked
        )

    def failed(self, remote: str, username: str | None) -> float:
        """Count a failed login from `remote` as `username` (None: no usable credentials).

        Returns the seconds to wait before answering it; raises AuthLockedOutError when the
        pair, the user or the address had failed too often already.
        """
        now = self._clock()
        network = client_network(remote)
        user = user_tried(username)
        counted = [(self.addresses, network)]
        if user is not None:
            counted += [(self.pairs, f"{network} {user}"), (self.users, user)]
        locked_for = max(counts.locked_for(key, now) for counts, key in counted)
        delay = max(counts.delay(key, now) for counts, key in counted)
        # Refused attempts count too: their keys were still checked.
        for counts, key in counted:
            counts.record(key, now)
        if locked_for:
            raise AuthLockedOutError("Authentication failed too often: try again later", locked_for)
        return delay


@dataclass
class _Bucket:
    tokens: float
    updated: float


class UserRateLimiter:
    """A token bucket per user: `rate` requests per second, bursts of `4 × rate`."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, 4 * rate)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, user: str, now: float | None = None) -> None:
        """Spend one request of `user`'s; RateLimitedError when the bucket is empty."""
        if self._rate <= 0:
            return
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(self._burst, now)
            while len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1:
            retry_after = max(1, int((1 - bucket.tokens) / self._rate) + 1)
            raise RateLimitedError("Too many requests: slow down", retry_after)
        bucket.tokens -= 1


class TransferLimiter:
    """Caps the drive reads and writes under way at once, per user and on the whole host.

    Each transfer holds buffers (a write's pending pieces, an encrypted read's decrypted
    pieces: about 8 MiB at worst) for as long as its client keeps it going, so without a cap
    one account opening connections could exhaust the daemon's memory. A transfer over either
    cap is refused at once with 429 `busy` and Retry-After, as the rate limit is: the client
    tools retry a chunk, and queueing would only hold the connection open for nothing.
    """

    def __init__(self, per_user: int, total: int) -> None:
        self._per_user, self._total = per_user, total
        self._by_user: Counter[str] = Counter()
        self._count = 0

    @property
    def under_way(self) -> int:
        """How many transfers are under way on the host."""
        return self._count

    @contextmanager
    def admit(self, user: str) -> Iterator[None]:
        """Count one transfer of `user` for the body's duration; RateLimitedError if over."""
        if self._per_user and self._by_user[user] >= self._per_user:
            raise RateLimitedError(
                f"Too many drive transfers at once: at most {self._per_user} per account",
                TRANSFER_RETRY_AFTER,
            )
        if self._total and self._count >= self._total:
            raise RateLimitedError(
                "The platform has too many drive transfers under way: try again shortly",
                TRANSFER_RETRY_AFTER,
            )
        self._by_user[user] += 1
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            self._by_user[user] -= 1
            if not self._by_user[user]:
                del self._by_user[user]
