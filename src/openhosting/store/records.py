"""Typed records of the store's rows: what its queries give the services.

One frozen dataclass per kind of row the services read, each made from a row by column name
(SQLAlchemy's `mappings()` or the Reader's, whose Booleans read 0 or 1) with `from_row`, and
giving its columns back with `to_row`. Columns that hold an encoded value (space-separated
lists, JSON objects) are decoded and encoded here and nowhere else.

Here in `store/` rather than in `model/`: `model/` is what a user may choose, validated;
a record is what a table holds (secrets, counters, imaging marks, ids), so it changes with
the tables and their migrations.
"""

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


# -- drives and claims ---------------------------------------------------------------------


@dataclass(frozen=True)
class DriveRecord:
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
    user_keys: Mapping[str, str] = field(default_factory=dict)
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

    @classmethod
    def from_row(cls, row: Row) -> "DriveRecord":
        return cls(
            uuid=row["uuid"],
            user=row["user"],
            size=int(row["size"]),
            cipher=row["cipher"],
            created_at=float(row["created_at"]),
            name=row["name"],
            claim_type=row["claim_type"],
            readers=_words(row["readers"]),
            tags=_words(row["tags"]),
            user_keys=_user_keys(row["user_keys"]),
            avoid=_words(row["avoid"]),
            tier=row["tier"],
            wrapped_passphrase=_bytes_or_none(row["wrapped_passphrase"]),
            wrapped_master_key=_bytes_or_none(row["wrapped_master_key"]),
            read_bytes=int(row["read_bytes"]),
            read_requests=int(row["read_requests"]),
            write_bytes=int(row["write_bytes"]),
            write_requests=int(row["write_requests"]),
            media=row["media"],
            format=row["format"],
            rawsize=_int_or_none(row["rawsize"]),
            imaging=row["imaging"],
            imaging_error=row["imaging_error"],
            host=row["host"],
        )

    def to_row(self) -> Columns:
        """Every column of the drive's row."""
        return {
            "uuid": self.uuid,
            "user": self.user,
            "cipher": self.cipher,
            "created_at": self.created_at,
            **drive_settings_columns(self.settings),
            "wrapped_passphrase": self.wrapped_passphrase,
            "wrapped_master_key": self.wrapped_master_key,
            "read_bytes": self.read_bytes,
            "read_requests": self.read_requests,
            "write_bytes": self.write_bytes,
            "write_requests": self.write_requests,
            "media": self.media,
            "format": self.format,
            "rawsize": self.rawsize,
            "imaging": self.imaging,
            "imaging_error": self.imaging_error,
            "host": self.host,
        }

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
class ClaimRecord:
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

    @classmethod
    def from_row(cls, row: Row) -> "ClaimRecord":
        return cls(
            id=int(row["id"]),
            drive=row["drive"],
            user=row["user"],
            kind=row["kind"],
            holder=row["holder"],
            device=row["device"],
            exclusive=bool(row["exclusive"]),
            guest_read_bytes=int(row["guest_read_bytes"]),
            guest_read_requests=int(row["guest_read_requests"]),
            guest_write_bytes=int(row["guest_write_bytes"]),
            guest_write_requests=int(row["guest_write_requests"]),
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


# -- imaging jobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
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

    @classmethod
    def from_row(cls, row: Row) -> "JobRecord":
        return cls(
            id=int(row["id"]),
            user=row["user"],
            dst=row["dst"],
            src=row["src"],
            state=row["state"],
            created_at=float(row["created_at"]),
            conversion=row["conversion"],
            bytes_done=int(row["bytes_done"]),
            bytes_total=int(row["bytes_total"]),
            error=row["error"],
            started_at=_float_or_none(row["started_at"]),
            ended_at=_float_or_none(row["ended_at"]),
            owner=row["owner"],
            lease_until=_float_or_none(row["lease_until"]),
            attempts=int(row["attempts"]),
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


# -- resources and the NICs of active servers ----------------------------------------------


@dataclass(frozen=True)
class ResourceRecord:
    """A row of `resources`: an IP address of the pool (`resource` the address) or a VLAN
    (`resource` its UUID) that a user owns."""

    type: str
    resource: str
    user: str
    created_at: int
    name: str = ""
    tags: tuple[str, ...] = ()
    user_keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Row) -> "ResourceRecord":
        return cls(
            type=row["type"],
            resource=row["resource"],
            user=row["user"],
            created_at=int(row["created_at"]),
            name=row["name"],
            tags=_words(row["tags"]),
            user_keys=_user_keys(row["user_keys"]),
        )

    def to_row(self) -> Columns:
        return {
            "type": self.type,
            "resource": self.resource,
            "user": self.user,
            "created_at": self.created_at,
            **resource_settings_columns(self.settings),
        }

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
class NicRecord:
    """A row of `server_nics`: what one NIC of an active server holds (its MAC on its
    network, and the pool address it is offered, if any), from the server's start to its stop.
    `nic` is the NIC's index, or services/server_network.py's row for a VNC address."""

    server: str
    nic: int
    user: str
    network: str
    mac: str
    address: str | None = None
    temporary: bool = False

    @classmethod
    def from_row(cls, row: Row) -> "NicRecord":
        return cls(
            server=row["server"],
            nic=int(row["nic"]),
            user=row["user"],
            network=row["network"],
            mac=row["mac"],
            address=row["address"],
            temporary=bool(row["temporary"]),
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


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
class ServerRecord:
    """A row of `servers`: a server's configuration and what it should be (`active`,
    `stopped`, `dead`, `dumped`); whether its VM really runs is the hypervisor's to say."""

    uuid: str
    user: str
    config: ServerConfig
    created_at: float
    status: str = "stopped"
    started_at: int | None = None
    vnc_display: int | None = None
    host: str = ""  # whose driver runs its VM; empty: the daemon's own host

    @classmethod
    def from_row(cls, row: Row) -> "ServerRecord":
        return cls(
            uuid=row["uuid"],
            user=row["user"],
            config=decode_server_config(row["config"]),
            created_at=float(row["created_at"]),
            status=row["status"],
            started_at=_int_or_none(row["started_at"]),
            vnc_display=_int_or_none(row["vnc_display"]),
            host=row["host"] or "",
        )

    def to_row(self) -> Columns:
        return {
            "uuid": self.uuid,
            "user": self.user,
            "config": encode_server_config(self.config),
            "created_at": self.created_at,
            "status": self.status,
            "started_at": self.started_at,
            "vnc_display": self.vnc_display,
            "host": self.host,
        }


# -- users, their usage and the audit trail ------------------------------------------------


def encode_tier_limits(limits: Mapping[str, int]) -> str:
    """The `max_drive_bytes_by_tier` column: a JSON object tier → bytes, keys sorted."""
    return json.dumps(dict(limits), sort_keys=True)


def _tier_limits(text: str | None) -> dict[str, int]:
    return {str(tier): int(limit) for tier, limit in json.loads(text or "{}").items()}


@dataclass(frozen=True)
class UserRecord:
    """A row of `users` (an account: its limits, None for none, and its balance), but for
    its key hash: only authentication reads that (`users.KEY_HASH_BY_UUID`), so no record
    carries it elsewhere."""

    uuid: str
    created_at: int
    name: str = ""
    max_drive_bytes: int | None = None
    max_drive_bytes_by_tier: Mapping[str, int] = field(default_factory=dict)
    max_ips: int | None = None
    max_vlans: int | None = None
    max_servers: int | None = None
    max_cpu_mhz: int | None = None
    max_mem_mb: int | None = None
    balance: int = 0  # millionths of the platform's currency
    metered_at: float | None = None

    @classmethod
    def from_row(cls, row: Row) -> "UserRecord":
        return cls(
            uuid=row["uuid"],
            created_at=int(row["created_at"]),
            name=row["name"],
            max_drive_bytes=_int_or_none(row["max_drive_bytes"]),
            max_drive_bytes_by_tier=_tier_limits(row["max_drive_bytes_by_tier"]),
            max_ips=_int_or_none(row["max_ips"]),
            max_vlans=_int_or_none(row["max_vlans"]),
            max_servers=_int_or_none(row["max_servers"]),
            max_cpu_mhz=_int_or_none(row["max_cpu_mhz"]),
            max_mem_mb=_int_or_none(row["max_mem_mb"]),
            balance=int(row["balance"]),
            metered_at=_float_or_none(row["metered_at"]),
        )

    def to_row(self) -> Columns:
        """Every column but `key_hash`."""
        return {
            "uuid": self.uuid,
            "created_at": self.created_at,
            "name": self.name,
            "max_drive_bytes": self.max_drive_bytes,
            "max_drive_bytes_by_tier": encode_tier_limits(self.max_drive_bytes_by_tier),
            "max_ips": self.max_ips,
            "max_vlans": self.max_vlans,
            "max_servers": self.max_servers,
            "max_cpu_mhz": self.max_cpu_mhz,
            "max_mem_mb": self.max_mem_mb,
            "balance": self.balance,
            "metered_at": self.metered_at,
        }

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
class UsageRecord:
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

    @classmethod
    def from_row(cls, row: Row) -> "UsageRecord":
        return cls(
            id=int(row["id"]),
            user=row["user"],
            start=float(row["start"]),
            end=float(row["end"]),
            drive_bytes=int(row["drive_bytes"]),
            cpu_mhz=int(row["cpu_mhz"]),
            mem_mb=int(row["mem_mb"]),
            ips=int(row["ips"]),
            vlans=int(row["vlans"]),
            charge=int(row["charge"]),
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AuditRecord:
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

    @classmethod
    def from_row(cls, row: Row) -> "AuditRecord":
        return cls(
            id=int(row["id"]),
            at=float(row["at"]),
            user=row["user"],
            method=row["method"],
            path=row["path"],
            status=int(row["status"]),
            remote=row["remote"],
            object=row["object"],
            error=row["error"],
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


# -- web console tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleTokenRecord:
    """A row of `console_tokens`: a token (by its SHA-256 only) that opens the console of
    one server for its user once, before `expires`; `used_at` once its WebSocket used it;
    `session_hash`, the dashboard session it is bound to (None: a bearer token)."""

    token_hash: str
    server: str
    user: str
    expires: float
    used_at: float | None = None
    session_hash: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> "ConsoleTokenRecord":
        return cls(
            token_hash=row["token_hash"],
            server=row["server"],
            user=row["user"],
            expires=float(row["expires"]),
            used_at=_float_or_none(row["used_at"]),
            session_hash=row["session_hash"],
        )

    def to_row(self) -> Columns:
        return dataclasses.asdict(self)


# -- hosts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRecord:
    """A row of `hosts`: a hypervisor host, its capacity and its last heartbeat."""

    name: str
    state: str
    cores: int
    core_mhz: int
    memory_mb: int
    disk_bytes_by_tier: Mapping[str, int]
    heartbeat_at: float
    created_at: float
    agent: str = ""  # HOST:PORT of its agent; empty: none
    vxlan_local: str = ""  # its VXLAN underlay address; empty: none known

    @classmethod
    def from_row(cls, row: Row) -> "HostRecord":
        disk = row["disk_bytes_by_tier"]
        return cls(
            name=row["name"],
            state=row["state"],
            cores=int(row["cores"]),
            core_mhz=int(row["core_mhz"]),
            memory_mb=int(row["memory_mb"]),
            disk_bytes_by_tier={
                tier: int(size) for tier, size in (json.loads(disk) if disk else {}).items()
            },
            heartbeat_at=float(row["heartbeat_at"]),
            created_at=float(row["created_at"]),
            agent=row["agent"] or "",
            vxlan_local=row["vxlan_local"] or "",
        )

    def to_row(self) -> Columns:
        """Every column of the host's row."""
        return {
            "name": self.name,
            "state": self.state,
            "cores": self.cores,
            "core_mhz": self.core_mhz,
            "memory_mb": self.memory_mb,
            "disk_bytes_by_tier": json.dumps(dict(self.disk_bytes_by_tier), sort_keys=True),
            "heartbeat_at": self.heartbeat_at,
            "created_at": self.created_at,
            "agent": self.agent,
            "vxlan_local": self.vxlan_local,
        }
