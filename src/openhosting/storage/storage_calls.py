"""A storage call's first line, as the control plane sends it (storage/remote_storage.py) and
a host agent reads it (agent/storage_routes.py): one JSON object naming the drive by UUID and
tier, with what the call needs (sizes, offsets, keys as base64). An imaging job run by an
agent (`ImageCall`) names two drives, and is answered with lines of its own (`image_line`)."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from openhosting.errors import UsageError
from openhosting.storage.imaging import CONVERSIONS

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIER = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_GENERATION = re.compile(r"[0-9a-f]{1,32}")
# The most drive files one listing call may ask for (its answer is one JSON body).
MAX_FILES_PAGE = 10_000


@dataclass(frozen=True)
class StorageCall:
    """One storage call's first line, checked: a drive is named by its lowercase UUID (it
    becomes a file name here) and its tier by a plain word."""

    drive: str
    tier: str
    size: int = 0
    kept: int = 0
    offset: int = 0
    count: int = 0
    staged: bool = False
    age: int = 0  # seconds a file must have gone unmodified to be removed as an orphan
    passphrase: bytes | None = None
    master_key: bytes | None = None

    @classmethod
    def decode(cls, line: bytes) -> StorageCall:
        with _malformed("storage call"):
            fields = _object(line)
            call = cls(
                drive=str(fields["drive"]),
                tier=str(fields["tier"]),
                size=_count(fields, "size"),
                kept=_count(fields, "kept"),
                offset=_count(fields, "offset"),
                count=_count(fields, "count"),
                staged=fields.get("staged") is True,
                age=_count(fields, "age"),
                passphrase=_key(fields, "passphrase"),
                master_key=_key(fields, "master_key"),
            )
        if not _UUID.fullmatch(call.drive) or not _TIER.fullmatch(call.tier):
            raise UsageError("malformed storage call: not a drive's UUID and tier")
        return call


@dataclass(frozen=True)
class CacheCall:
    """A call about one copy in a host's image cache (agent/image_cache.py): standard drive
    `drive` (its UUID) at `generation` (a hex word that changes whenever its bytes do), and
    for a fill its `size` in bytes."""

    drive: str
    generation: str
    size: int = 0

    @classmethod
    def decode(cls, line: bytes) -> CacheCall:
        with _malformed("cache call"):
            fields = _object(line)
            call = cls(
                drive=str(fields["drive"]),
                generation=str(fields["generation"]),
                size=_count(fields, "size"),
            )
        if not _UUID.fullmatch(call.drive) or not _GENERATION.fullmatch(call.generation):
            raise UsageError("malformed cache call: not a drive's UUID and generation")
        return call


@dataclass(frozen=True)
class CachedCopy:
    """One copy in a host's image cache: standard drive `drive` at `generation`, `size`
    bytes (an item of the agent's `/cache/list` answer)."""

    drive: str
    generation: str
    size: int


@dataclass(frozen=True)
class FilesCall:
    """A listing call's first line: the page of drive files after UUID `after` ("" for the
    first), `limit` of them at most."""

    after: str
    limit: int

    @classmethod
    def decode(cls, line: bytes) -> FilesCall:
        with _malformed("listing call"):
            fields = _object(line)
            call = cls(after=str(fields.get("after", "")), limit=_count(fields, "limit"))
        if call.after and not _UUID.fullmatch(call.after):
            raise UsageError("malformed listing call: after is not a drive's UUID")
        if not 1 <= call.limit <= MAX_FILES_PAGE:
            raise UsageError(f"malformed listing call: limit must be 1 to {MAX_FILES_PAGE}")
        return call


@dataclass(frozen=True)
class ImageCall:
    """An imaging job between two drives of one host, as the control plane asks that host's
    agent to run it: drive `drive` (DST) filled from drive `source` by `conversion` (copy "",
    "gzip" or "gunzip"), each named by its UUID and tier (they become file names there) with
    its size and master key (None: plain), at most `max_rate` source bytes per second (0: no
    limit). No path crosses the wire."""

    drive: str
    tier: str
    size: int
    source: str
    source_tier: str
    source_size: int
    conversion: str = ""
    max_rate: int = 0
    master_key: bytes | None = field(default=None, repr=False)
    source_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def decode(cls, line: bytes) -> ImageCall:
        with _malformed("imaging call"):
            fields = _object(line)
            call = cls(
                drive=str(fields["drive"]),
                tier=str(fields["tier"]),
                size=_count(fields, "size"),
                source=str(fields["source"]),
                source_tier=str(fields["source_tier"]),
                source_size=_count(fields, "source_size"),
                conversion=str(fields.get("conversion", "")),
                max_rate=_count(fields, "max_rate"),
                master_key=_key(fields, "master_key"),
                source_key=_key(fields, "source_key"),
            )
        drives, tiers = (call.drive, call.source), (call.tier, call.source_tier)
        if not all(map(_UUID.fullmatch, drives)) or not all(map(_TIER.fullmatch, tiers)):
            raise UsageError("malformed imaging call: not drives' UUIDs and tiers")
        if call.conversion not in CONVERSIONS:
            raise UsageError(f"malformed imaging call: no conversion {call.conversion!r}")
        if call.drive == call.source:
            raise UsageError("malformed imaging call: a drive cannot be imaged from itself")
        return call

    def encode(self) -> bytes:
        return encode_call(**asdict(self))


def image_line(**fields: Any) -> bytes:
    """One line of an imaging call's answer: `{"done": N, "total": T}` while the job runs (SRC's
    bytes done, of `total`), `{"end": T}` once DST is durable, or `{"error": message, "kind":
    X-Elastic-Error kind}` (with `"gzip": true` when SRC held no whole gzip stream)."""
    return json.dumps(fields).encode() + b"\n"


def encode_call(**fields: Any) -> bytes:
    """A storage call's first line (the control plane's side): keys as base64."""
    for name in ("passphrase", "master_key", "source_key"):
        if isinstance(fields.get(name), bytes):
            fields[name] = base64.b64encode(fields[name]).decode()
    return json.dumps(fields).encode() + b"\n"


def _count(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name, 0)
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a count")
    return value


def _key(fields: dict[str, Any], name: str) -> bytes | None:
    value = fields.get(name)
    return None if value is None else base64.b64decode(str(value), validate=True)


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """A call's line that is not JSON, not an object, lacks a key or holds a wrong type or
    bad base64 (binascii.Error is a ValueError): a UsageError naming the call."""
    try:
        yield
    except (KeyError, ValueError, TypeError) as error:
        raise UsageError(f"malformed {what}: {error!r}") from None


def _object(line: bytes) -> dict[str, Any]:
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("not an object")
    return fields
