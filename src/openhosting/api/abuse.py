"""Slowing down abuse at the edge: repeated authentication failures from one address,
(optionally) too many requests from one user, and too many drive transfers at once.

In memory, per daemon, bounded: an attacker cycling addresses can fill the tables, but then
the oldest entries go first and memory stays flat.
"""

import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from openhosting.errors import AuthError, BusyError

MAX_TRACKED = 65536
MAX_DELAY = 5.0
# Seconds a refused transfer is told to wait: transfers last seconds, not minutes.
TRANSFER_RETRY_AFTER = 1


class RateLimitedError(BusyError):
    """Too many requests: 429, with the API's `busy` type and a Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthLockedOutError(AuthError):
    """Too many failed logins from one address: 401 with a Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Failures:
    count: int
    window_start: float


class AuthThrottle:
    """Counts authentication failures per source address within a window."""

    def __init__(self, free: int, maximum: int, window: float) -> None:
        self._free, self._max, self._window = free, maximum, window
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def _current(self, remote: str, now: float) -> _Failures | None:
        entry = self._failures.get(remote)
        if entry is not None and now - entry.window_start > self._window:
            del self._failures[remote]
            return None
        return entry

    def delay_before(self, remote: str, now: float | None = None) -> float:
        """Seconds to wait before checking this address's credentials; raises
        AuthLockedOutError when it has failed too often."""
        now = time.monotonic() if now is None else now
        entry = self._current(remote, now)
        if entry is None or entry.count < self._free:
            return 0.0
        if entry.count >= self._max:
            retry_after = max(1, int(entry.window_start + self._window - now) + 1)
            raise AuthLockedOutError(
                "Authentication failed too often from this address: try again later",
                retry_after,
            )
        return min(MAX_DELAY, 0.1 * 2 ** (entry.count - self._free))

    def failed(self, remote: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        entry = self._current(remote, now)
        if entry is None:
            self._failures[remote] = _Failures(1, now)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)
        else:
            entry.count += 1

    def succeeded(self, remote: str) -> None:
        self._failures.pop(remote, None)


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
