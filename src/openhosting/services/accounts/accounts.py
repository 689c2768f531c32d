"""Accounts: users, their secret API keys, and authentication.

Keys are random (192 bits), shown once, and stored only as a keyed hash, so a copy of the
database alone lets nobody in.
"""

import functools
import hmac
import secrets
import time
import uuid as uuid_module
from dataclasses import dataclass

from sqlalchemy import Engine

from openhosting.errors import AuthError, BusyError, MissingError
from openhosting.model.common import parse_name
from openhosting.store import console_tokens as console_token_store
from openhosting.store import users as user_store
from openhosting.store import web_sessions as web_session_store
from openhosting.store.platform_key import derive_key, keyed_hash
from openhosting.store.reader import Reader
from openhosting.store.records import UserRecord, encode_tier_limits

UUID_LENGTH = 36
MAX_VERIFIED = 4096


@dataclass(frozen=True)
class NewKey:
    """A user's UUID with a secret key, as shown once to the operator."""

    uuid: str
    secret: str


def new_secret() -> str:
    return secrets.token_urlsafe(24)


class Accounts:
    """Users and authentication."""

    def __init__(self, engine: Engine, reader: Reader, platform_key: bytes) -> None:
        self._engine = engine
        self._reader = reader
        self._hash_key = derive_key(platform_key, "api-key-hash")
        # Compared against when the user does not exist, so that an unknown user and a wrong
        # key take the same path and the same time.
        self._decoy_hash = keyed_hash(self._hash_key, new_secret())
        # Pairs verified, by the data version they were verified at: only at that version
        # are they trusted (on PostgreSQL they are verified in several threads at once).
        self._verified: dict[tuple[str, str], int] = {}
        self._verified_version = -1

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Accounts per process, never freed
    def _hash_of(self, secret: str) -> str:
        """The keyed hash of `secret`, remembered: the same few keys arrive over and over."""
        return keyed_hash(self._hash_key, secret)

    def create_user(self, name: str = "") -> NewKey:
        name = parse_name(name)  # the column's length, which PostgreSQL enforces
        key = NewKey(str(uuid_module.uuid4()), new_secret())
        with self._engine.begin() as connection:
            user_store.insert_user(
                connection,
                uuid=key.uuid,
                name=name,
                key_hash=keyed_hash(self._hash_key, key.secret),
                created_at=int(time.time()),
            )
        return key

    def authenticate(self, uuid: str, secret: str) -> str:
        """The user's UUID when `secret` is their key; AuthError otherwise.

        A pair already verified is trusted again while nothing has been written to the
        database since (a rotated or deleted key is a write): one tiny query instead of two.
        """
        version = self._reader.data_version()
        if version != self._verified_version:
            self._verified.clear()
            self._verified_version = version
        if self._verified.get((uuid, secret)) == version:
            return uuid
        self._check_key(uuid, secret)
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[(uuid, secret)] = version
        return uuid

    def _check_key(self, uuid: str, secret: str) -> None:
        stored = None
        if len(uuid) == UUID_LENGTH:
            stored = self._reader.scalar(user_store.KEY_HASH_BY_UUID, uuid=uuid)
        given = self._hash_of(secret)
        matches = hmac.compare_digest(given, stored if stored is not None else self._decoy_hash)
        if stored is None or not matches:
            raise AuthError("Authentication failed: wrong user UUID or secret API key")

    def key_version(self, uuid: str) -> str | None:
        """What changes whenever the user's key is rotated (its stored hash); None once the
        user is gone. What an event stream or a console opened with the key checks as it
        runs."""
        version: str | None = self._reader.scalar(user_store.KEY_HASH_BY_UUID, uuid=uuid)
        return version

    def rotate_key(self, uuid: str) -> NewKey:
        """A new key for the user; the old one, every dashboard session signed in with it,
        and every console token asked with it, stop working (a key is rotated because it may
        have leaked)."""
        key = NewKey(uuid, new_secret())
        with self._engine.begin() as connection:
            if not user_store.update_user(
                connection, uuid, key_hash=keyed_hash(self._hash_key, key.secret)
            ):
                raise MissingError(f"User {uuid} could not be found")
            web_session_store.delete_sessions_of(connection, uuid)
            console_token_store.delete_tokens_of(connection, uuid)
        return key

    def delete_user(self, uuid: str) -> None:
        """Delete a user who owns nothing any more; `BusyError` naming what it still owns.

        The database's cascade would take a user's drives, servers and resources with its
        row, leaving their files, running VMs and addresses with no row to name them: the
        operator destroys those first (or the user does), then deletes the user.
        """
        with self._engine.begin() as connection:
            if user_store.delete_user(connection, uuid):
                return
            if user_store.get_user(connection, uuid) is None:
                raise MissingError(f"User {uuid} could not be found")
            owned = user_store.owned_objects(connection, uuid)
        what = ", ".join(
            f"{count} {name if count != 1 else name[:-1]}" for name, count in owned.items() if count
        )
        raise BusyError(f"User {uuid} still owns {what}: destroy them first")

    def get_user(self, uuid: str) -> UserRecord:
        with self._engine.connect() as connection:
            user = user_store.get_user(connection, uuid)
        if user is None:
            raise MissingError(f"User {uuid} could not be found")
        return user

    def list_users(self) -> list[UserRecord]:
        with self._engine.connect() as connection:
            return user_store.list_users(connection)

    def has_users(self) -> bool:
        with self._engine.connect() as connection:
            return user_store.count_users(connection) > 0

    def set_limits(self, uuid: str, **limits: int | None) -> None:
        with self._engine.begin() as connection:
            if not user_store.update_user(connection, uuid, **limits):
                raise MissingError(f"User {uuid} could not be found")

    def set_tier_limit(self, uuid: str, tier: str, limit: int | None) -> None:
        """Limit the user's drive bytes in `tier` to `limit` (None: no limit of its own)."""
        with self._engine.begin() as connection:
            user = user_store.get_user(connection, uuid)
            if user is None:
                raise MissingError(f"User {uuid} could not be found")
            limits = dict(user.max_drive_bytes_by_tier)
            if limit is None:
                limits.pop(tier, None)
            else:
                limits[tier] = limit
            user_store.update_user(
                connection, uuid, max_drive_bytes_by_tier=encode_tier_limits(limits)
            )
