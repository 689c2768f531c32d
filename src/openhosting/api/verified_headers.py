"""Basic `Authorization` headers already verified, trusted again while nothing has been
committed to the database since.

A client sends the same header on every request; decoding it and checking its key (even
against the Accounts' own cache) was the largest part of a cheap read's cost. A rotated or
deleted key, or a deleted user, is a commit: every entry goes with it, so such a key is
refused from its next request on, as before. Only headers that passed the key check are
kept; a failure is counted and throttled every time (api/abuse.py).

The entries are keyed by a keyed BLAKE2 digest of the header, under a random key of this
process: no secret (the header is its base64) is kept in memory in the clear, and the keys
say nothing to someone reading a memory dump of another process or an earlier run.
"""

import hashlib
import os

from openhosting.store.reader import Reader

# Bounded: a flood of distinct valid headers (one per user at most) empties it and starts
# again; a client's next request is then checked once more, nothing else.
MAX_VERIFIED = 4096
DIGEST_BYTES = 16  # 128 bits: no two headers meet by chance


class VerifiedHeaders:
    """Which user each verified header belongs to, at the database's current version."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        # Keyed once: a copy of this hash starts where the key left it, without hashing the
        # key's block again for every request (a third of the digest's cost).
        self._keyed = hashlib.blake2b(digest_size=DIGEST_BYTES, key=os.urandom(32))
        self._users: dict[bytes, str] = {}
        self._version: int | None = None

    def _digest(self, header: str) -> bytes:
        # Any header's text, undecodable bytes included (aiohttp gives them as surrogates):
        # a malformed one must reach the key check's 401, not fail here.
        digest = self._keyed.copy()
        digest.update(header.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def version(self) -> int | None:
        """The database's version to remember a check made now under (read before the
        check: a commit during it makes what it found never used); None when nothing may be
        kept (PostgreSQL while its change feed hears nothing, store/reader.py)."""
        return self._reader.data_version() if self._reader.caches else None

    def user_of(self, header: str) -> str | None:
        """The user `header` was verified for, if nothing has been committed since."""
        version = self.version()
        if version is None:
            return None
        if version != self._version:
            self._users.clear()
            self._version = version
            return None
        return self._users.get(self._digest(header))

    def remember(self, header: str, user: str, version: int | None) -> None:
        """`header` passed the key check of `user`, begun at `version`."""
        if version is None or version != self.version():
            return  # a commit landed meanwhile (or nothing may be kept): check again next time
        if version != self._version:
            self._users.clear()
            self._version = version
        if len(self._users) >= MAX_VERIFIED:
            self._users.clear()
        self._users[self._digest(header)] = user

    def __len__(self) -> int:
        return len(self._users)
