"""Typed records of the store's rows: what its queries give the services.

One frozen dataclass per kind of row the services read, each made from a row by column name
(SQLAlchemy's `mappings()` or the Reader's, whose Booleans read 0 or 1) with `from_row`, and
giving its columns back with `to_row`. Both are one for all (`StoreRecord`): each field is
decoded and encoded by its type, or by the decoder and encoder its field's metadata names
(`DECODE`, `ENCODE`) where the type does not say how. Columns that hold an encoded value
(space-separated lists, JSON objects) are decoded and encoded here and nowhere else.

Here in `store/` rather than in `model/`: `model/` is what a user may choose, validated;
a record is what a table holds (secrets, counters, imaging marks, ids), so it changes with
the tables and their migrations.
"""

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

from openhosting.host_capacity import HostCapacity
from openhosting.model.common import EVERYONE
from openhosting.model.drive import DriveSettings
from openhosting.model.resource import ResourceSettings
from openhosting.model.server import ServerConfig

# A row by column name: SQLAlchemy's RowMapping (keyed by names or columns), the Reader's dict.
Row = Mapping[Any, Any]
# Columns to write, by name (`insert_*` and `update_*` take them as keywords).
Columns = dict[str, object]


def _words(text: str | None) -> tuple[str, ...]:
    """A space-separated column (`readers`, `tags`, `avoid`) as its words."""
    return tuple((text or "").split())


def _user_keys(text: str | None) -> dict[str, str]:
    """A `user_keys` column (a JSON object of strings, `encode_user_keys`) as a dict."""
    # Most rows have none: a drive list reads thousands of rows per request.
    if not text or text == "{}":
        return {}
    keys: dict[str, str] = json.loads(text)
    return keys


def encode_user_keys(user_keys: Mapping[str, str]) -> str:
    """The `user_keys` column of `user_keys`: JSON, keys sorted."""
    return json.dumps(dict(user_keys), sort_keys=True)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _bytes_or_none(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _or_empty(value: str | None) -> str:
    """A text column added to rows that were there before (its NULLs read as blank)."""
    return value or ""


# How a column becomes its field, by the field's type: numbers as Python's own (a driver may
# give a Decimal or an int for a float), the Reader's 0 and 1 as Booleans, BLOBs as bytes.
# Text is taken as stored (None: no call, the cost of a drive list is its rows).
_DECODE_BY_TYPE: Mapping[Any, Callable[[Any], Any] | None] = {
    str: None,
    str | None: None,
    int: int,
    int | None: _int_or_none,
    float: float,
    float | None: _float_or_none,
    bool: bool,
    bytes | None: _bytes_or_none,
    tuple[str, ...]: _words,
}
# How a field becomes its column, by the field's type where it is not stored as it is.
_ENCODE_BY_TYPE: Mapping[Any, Callable[[Any], Any]] = {
    tuple[str, ...]: " ".join,
}
# The keys of a field's metadata that name its decoder and its encoder, where its type does
# not say them (JSON columns, the server's configuration).
DECODE = "decode"
ENCODE = "encode"


# Each field's name with how its column is decoded, or how it is encoded (None: as it is).
FieldCodecs = tuple[tuple[str, Callable[[Any], Any] | None], ...]


class _Codecs(NamedTuple):
    decoders: FieldCodecs
    encoders: FieldCodecs


_codecs_of: dict[type, _Codecs] = {}


def _codecs(record: type) -> _Codecs:
    """How each field of `record` (a dataclass) is decoded, and how it is encoded: worked out
    once per record type (a drive list decodes thousands of rows)."""
    codecs = _codecs_of.get(record)
    if codecs is None:
        fields = dataclasses.fields(record)
        codecs = _codecs_of[record] = _Codecs(
            decoders=tuple((column.name, _decoder(record, column)) for column in fields),
            encoders=tuple((column.name, _encoder(column)) for column in fields),
        )
    return codecs


def _decoder(record: type, column: dataclasses.Field[Any]) -> Callable[[Any], Any] | None:
    if DECODE in column.metadata:
        decode: Callable[[Any], Any] = column.metadata[DECODE]
        return decode
    if column.type not in _DECODE_BY_TYPE:
        raise TypeError(f"{record.__name__}.{column.name}: no decoder for {column.type}")
    return _DECODE_BY_TYPE[column.type]


def _encoder(column: dataclasses.Field[Any]) -> Callable[[Any], Any] | None:
    encode: Callable[[Any], Any] | None = column.metadata.get(
        ENCODE, _ENCODE_BY_TYPE.get(column.type)
    )
    return encode


class StoreRecord:
    """A record made from a row by its fields' names, and giving its row back (the base of
    every record here)."""

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The record of `row`: each field from the column of its name, decoded."""
        # By position, in the fields' order (the dataclass's __init__ order): no keyword dict.
        return cls(
            *[
                row[name] if decode is None else decode(row[name])
                for name, decode in _codecs(cls).decoders
            ]
        )

    def to_row(self) -> Columns:
        """Every column the record holds, by name, encoded (what `from_row` reads back)."""
        columns: Columns = {}
        for name, encode in _codecs(type(self)).encoders:
            value = getattr(self, name)
            columns[name] = value if encode is None else encode(value)
        return columns


# -- drives and claims ---------------------------------------------------------------------


@dataclass(frozen=True)
class DriveRecord(StoreRecord):
    """A row of `drives`: a user's drive, or a standard drive (owned by the platform user)."""

    uuid: str
    user: str
    size: int
    cipher: str
    created_at: float
    name: str = ""
    claim_type: str = "exclusive"
    readers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_keys: Mapping[str, str] = field(
        default_factory=dict, metadata={DECODE: _user_keys, ENCODE: encode_user_keys}
    )
    avoid: tuple[str, ...] = ()
    tier: str = "disk"
    wrapped_passphrase: bytes | None = None
    wrapped_master_key: bytes | None = None
    read_bytes: int = 0
    read_requests: int = 0
    write_bytes: int = 0
    write_requests: int = 0
    media: str = "disk"
    format: str = ""
    rawsize: int | None = None
    imaging: str | None = None
    imaging_error: str | None = None
    host: str = ""

    @property
    def settings(self) -> DriveSettings:
        """What the drive's user chose of it."""
        return DriveSettings(
            name=self.name,
            size=self.size,
            claim_type=self.claim_type,
            readers=self.readers,
            tags=self.tags,
            user_keys=dict(self.user_keys),
            avoid=self.avoid,
            cipher=self.cipher,
            tier=self.tier,
        )

    def readable_by(self, user: str) -> bool:
        """Whether `user` may read the drive: its owner, or one its `readers` name."""
        return self.user == user or user in self.readers or EVERYONE in self.readers


def drive_settings_columns(settings: DriveSettings) -> Columns:
    """The columns a drive's settings are stored in (all but the cipher, fixed at create)."""
    return {
        "name": settings.name,
        "size": settings.size,
        "claim_type": settings.claim_type,
        "readers": " ".join(settings.readers),
        "tags": " ".join(settings.tags),
        "user_keys": encode_user_keys(settings.user_keys),
        "avoid": " ".join(settings.avoid),
        "tier": settings.tier,
    }


@dataclass(frozen=True)
class ClaimRecord(StoreRecord):
    """A row of `claims`: a server's device (`guest`) or an imaging job (`imaging`) holding a
    drive; a guest claim also keeps how much of its guest's I/O is in the drive's counters."""

    id: int
    drive: str
    user: str
    kind: str
    holder: str
    device: str
    exclusive: bool
    guest_read_bytes: int = 0
    guest_read_requests: int = 0
    guest_write_bytes: int = 0
    guest_write_requests: int = 0


# -- imaging jobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord(StoreRecord):
    """A row of `jobs`: one imaging request, from its acceptance to its end."""

    id: int
    user: str
    dst: str
    src: str
    state: str
    created_at: float
    conversion: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    owner: str | None = None
    lease_until: float | None = None
    attempts: int = 0


# -- resources and the NICs of active servers ----------------------------------------------


@dataclass(frozen=True)
class ResourceRecord(StoreRecord):
    """A row of `resources`: an IP address of the pool (`resource` the address) or a VLAN
    (`resource` its UUID) that a user owns."""

    type: str
    resource: str
    user: str
    created_at: int
    name: str = ""
    tags: tuple[str, ...] = ()
    user_keys: Mapping[str, str] = field(
        default_factory=dict, metadata={DECODE: _user_keys, ENCODE: encode_user_keys}
    )

    @property
    def settings(self) -> ResourceSettings:
        """What the resource's user chose of it."""
        return ResourceSettings(name=self.name, tags=self.tags, user_keys=dict(self.user_keys))


def resource_settings_columns(settings: ResourceSettings) -> Columns:
    """The columns a resource's settings are stored in."""
    return {
        "name": settings.name,
        "tags": " ".join(settings.tags),
        "user_keys": encode_user_keys(settings.user_keys),
    }


@dataclass(frozen=True)
class NicRecord(StoreRecord):
    """A row of `server_nics`: what one NIC of an active server holds (its MAC on its
    network, and the pool address it is offered, if any), from the server's start to its stop.
    `nic` is the NIC's index, or services/servers/server_network.py's row for a VNC address."""

    server: str
    nic: int
    user: str
    network: str
    mac: str
    address: str | None = None
    temporary: bool = False


# -- servers -------------------------------------------------------------------------------


def encode_server_config(config: ServerConfig) -> str:
    """The `config` column of a server: its canonical properties as JSON, keys sorted (so
    that an unchanged configuration is always the same text)."""
    return json.dumps(config.canonical_properties(), sort_keys=True)


# Parsing a stored configuration is most of a server info's cost, and it changes only with a
# set: each stored text is parsed once (ServerConfig is frozen; a text is ~1 KiB, 4 MiB at most
# for the cache).
@functools.lru_cache(maxsize=4096)
def decode_server_config(text: str) -> ServerConfig:
    """The configuration a server's `config` column holds."""
    return ServerConfig.from_properties(json.loads(text))


@dataclass(frozen=True)
class ServerRecord(StoreRecord):
    """A row of `servers`: a server's configuration and what it should be (`active`,
    `stopped`, `dead`, `dumped`); whether its VM really runs is the hypervisor's to say."""

    uuid: str
    user: str
    config: ServerConfig = field(
        metadata={DECODE: decode_server_config, ENCODE: encode_server_config}
    )
    created_at: float
    status: str = "stopped"
    started_at: int | None = None
    vnc_display: int | None = None
    # Whose driver runs its VM; empty: the daemon's own host.
    host: str = field(default="", metadata={DECODE: _or_empty})


# -- users, their usage and the audit trail ------------------------------------------------


def encode_tier_limits(limits: Mapping[str, int]) -> str:
    """The `max_drive_bytes_by_tier` column: a JSON object tier → bytes, keys sorted."""
    return json.dumps(dict(limits), sort_keys=True)


def _ints_by_tier(text: str | None) -> dict[str, int]:
    """A JSON object tier → int (`max_drive_bytes_by_tier`, a host's `disk_bytes_by_tier`)."""
    return {str(tier): int(limit) for tier, limit in json.loads(text or "{}").items()}


@dataclass(frozen=True)
class UserRecord(StoreRecord):
    """A row of `users` (an account: its limits, None for none, and its balance), but for
    its key hash: only authentication reads that (`users.KEY_HASH_BY_UUID`), so no record
    carries it elsewhere."""

    uuid: str
    created_at: int
    name: str = ""
    max_drive_bytes: int | None = None
    max_drive_bytes_by_tier: Mapping[str, int] = field(
        default_factory=dict, metadata={DECODE: _ints_by_tier, ENCODE: encode_tier_limits}
    )
    max_ips: int | None = None
    max_vlans: int | None = None
    max_servers: int | None = None
    max_cpu_mhz: int | None = None
    max_mem_mb: int | None = None
    balance: int = 0  # millionths of the platform's currency
    metered_at: float | None = None

    def limits(self) -> dict[str, int | None]:
        """The account's limits by the name its info gives them (`drive:bytes`, `servers`,
        `cpu`, `mem`, `ips`, `vlans`), None where there is none."""
        return {
            "drive:bytes": self.max_drive_bytes,
            "servers": self.max_servers,
            "cpu": self.max_cpu_mhz,
            "mem": self.max_mem_mb,
            "ips": self.max_ips,
            "vlans": self.max_vlans,
        }


@dataclass(frozen=True)
class UsageRecord(StoreRecord):
    """A row of `usage`: what one user held over one metering interval, and its charge."""

    id: int
    user: str
    start: float
    end: float
    drive_bytes: int
    cpu_mhz: int
    mem_mb: int
    ips: int
    vlans: int
    charge: int  # millionths


@dataclass(frozen=True)
class AuditRecord(StoreRecord):
    """A row of `audit`: one state-changing command, who asked it and how it ended."""

    id: int
    at: float
    user: str
    method: str
    path: str
    status: int
    remote: str = ""
    object: str | None = None
    error: str = ""


# -- web console tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleTokenRecord(StoreRecord):
    """A row of `console_tokens`: a token (by its SHA-256 only) that opens the console of
    one server for its user once, before `expires`; `used_at` once its WebSocket used it;
    `session_hash`, the dashboard session it is bound to (None: a bearer token)."""

    token_hash: str
    server: str
    user: str
    expires: float
    used_at: float | None = None
    session_hash: str | None = None


# -- hosts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRecord(StoreRecord):
    """A row of `hosts`: a hypervisor host, its capacity and its last heartbeat."""

    name: str
    state: str
    cores: int
    core_mhz: int
    memory_mb: int
    disk_bytes_by_tier: Mapping[str, int] = field(
        metadata={DECODE: _ints_by_tier, ENCODE: encode_tier_limits}
    )
    heartbeat_at: float
    created_at: float
    # HOST:PORT of its agent; empty: none.
    agent: str = field(default="", metadata={DECODE: _or_empty})
    # Its VXLAN underlay address; empty: none known.
    vxlan_local: str = field(default="", metadata={DECODE: _or_empty})

    @property
    def capacity(self) -> HostCapacity:
        """What the host offers, as it last measured it."""
        return HostCapacity(
            self.cores, self.core_mhz, self.memory_mb, dict(self.disk_bytes_by_tier)
        )
