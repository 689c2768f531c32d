"""The platform key: one random secret in the state directory (0600) from which the keys that
hash API keys and wrap drive secrets are derived. Losing it makes every stored secret useless,
so it is created once, atomically, and never rewritten."""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32


def load_or_create_platform_key(path: Path) -> bytes:
    """The platform key stored at `path`, created (mode 0600) if there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise RuntimeError(f"Platform key {path} is damaged ({len(key)} bytes)") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def derive_key(platform_key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, so that no two uses share key material."""
    return hmac.new(platform_key, b"openhosting:" + purpose.encode(), hashlib.sha256).digest()


def keyed_hash(key: bytes, secret: str) -> str:
    """The hex HMAC-SHA256 of `secret`: what is stored instead of an API key."""
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def wrap_secret(key: bytes, secret: bytes, context: str) -> bytes:
    """`secret` encrypted and authenticated under `key`, bound to `context` (e.g. a drive id)."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, secret, context.encode())


def unwrap_secret(key: bytes, wrapped: bytes, context: str) -> bytes:
    """The inverse of `wrap_secret`; raises `cryptography.exceptions.InvalidTag` if tampered."""
    return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], context.encode())
