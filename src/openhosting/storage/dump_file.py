"""A server's saved memory and device state (QEMU's migration stream), encrypted at rest.

QEMU writes its migration stream into a pipe; `write_dump` reads that pipe to its end and
stores it encrypted, `read_dump` writes it back decrypted into the pipe a restoring QEMU
reads. The key never leaves this process: no command line, no file of its own.

Layout: a header (magic, the length of the wrapped key, the per-dump key wrapped with the
caller's wrapping key and bound to the server id), then records of AES-256-GCM over up to
1 MiB of plaintext each: 4 bytes of ciphertext length, ciphertext with its tag. Record i has
nonce i, and the last one is marked in its associated data, so a reordered, cut-off or
altered dump is refused rather than fed to QEMU.
"""

import functools
import os
import secrets
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openhosting.directory_sync import sync_directory
from openhosting.reverter import Reverter
from openhosting.store.platform_key import unwrap_secret, wrap_secret

MAGIC = b"OHDUMP1\n"
RECORD_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")
_TAG_BYTES = 16


class DumpError(Exception):
    """A dump that cannot be read back: missing, damaged, tampered with, or another key's."""


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(uuid: str, last: bool) -> bytes:
    return f"{uuid}:{'last' if last else 'more'}".encode()


def _read_full(fd: int, size: int) -> bytes:
    """Up to `size` bytes from the pipe `fd`, fewer only at its end."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def write_dump(source_fd: int, path: Path, wrapping_key: bytes, uuid: str) -> int:
    """Read the pipe `source_fd` to its end and store it encrypted and synced at `path`
    (removed again if anything fails). Returns the plaintext bytes stored. Whether the
    stream was whole is the writer's to know: put the file in place with `commit_dump`."""
    key = secrets.token_bytes(32)
    cipher = AESGCM(key)
    wrapped = wrap_secret(wrapping_key, key, uuid)
    total = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with Reverter() as revert:
        revert.add(functools.partial(path.unlink, missing_ok=True))
        with os.fdopen(fd, "wb") as file:
            file.write(MAGIC + _LENGTH.pack(len(wrapped)) + wrapped)
            index = 0
            pending = _read_full(source_fd, RECORD_BYTES)
            while True:
                following = _read_full(source_fd, RECORD_BYTES) if pending else b""
                last = not following
                sealed = cipher.encrypt(_nonce(index), pending, _aad(uuid, last))
                file.write(_LENGTH.pack(len(sealed)) + sealed)
                total += len(pending)
                if last:
                    break
                pending, index = following, index + 1
            file.flush()
            os.fsync(file.fileno())
        revert.success()
    return total


def commit_dump(written: Path, final: Path) -> None:
    """Put the dump `written` in place as `final`, durably (it must survive a power cut)."""
    os.replace(written, final)
    sync_directory(final.parent)


def read_dump(path: Path, sink_fd: int, wrapping_key: bytes, uuid: str) -> int:
    """Decrypt the dump at `path` into the pipe `sink_fd`; `DumpError` if it is not whole and
    authentic (nothing after the first bad record is written). Returns the bytes written."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise DumpError(f"no dump at {path}") from None
    total = 0
    with file:
        header = file.read(len(MAGIC) + _LENGTH.size)
        if len(header) != len(MAGIC) + _LENGTH.size or not header.startswith(MAGIC):
            raise DumpError(f"{path} is not a dump")
        (wrapped_length,) = _LENGTH.unpack(header[len(MAGIC) :])
        try:
            key = unwrap_secret(wrapping_key, file.read(wrapped_length), uuid)
        except (InvalidTag, ValueError):
            raise DumpError(f"{path}: not this platform's dump of server {uuid}") from None
        cipher = AESGCM(key)
        index = 0
        while True:
            length = file.read(_LENGTH.size)
            if len(length) != _LENGTH.size:
                raise DumpError(f"{path} is cut off after {index} records")
            (sealed_length,) = _LENGTH.unpack(length)
            sealed = file.read(sealed_length)
            if sealed_length < _TAG_BYTES or len(sealed) != sealed_length:
                raise DumpError(f"{path} is cut off in record {index}")
            # Only the file's final record may be (and must be) marked last.
            last = file.peek(1) == b""
            try:
                plain = cipher.decrypt(_nonce(index), sealed, _aad(uuid, last))
            except InvalidTag:
                raise DumpError(f"{path}: record {index} is damaged") from None
            _write_all(sink_fd, plain)
            total += len(plain)
            if last:
                return total
            index += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
