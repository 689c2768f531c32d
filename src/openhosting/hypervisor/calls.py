"""The hypervisor driver's calls as plain data: one request record per `HypervisorDriver`
method, the type of its answer, and their JSON encoding, here and nowhere else.

This is what crosses between the control plane and a host agent (agent/server.py serves
the calls, hypervisor/remote_driver.py makes them). A request record's fields are the
method's parameters by name, so a call is `method(**fields)`; `start` takes its
`StartRequest` whole. What is not plain data stays off the records: the saved state of
`save_state` and of a restoring `start` is the body of the HTTP exchange, and events come on
a stream of their own (`VmEvent` records).

The encoding walks the records' type hints: dataclasses are JSON objects (with a `type`
naming the class, which tells the members of a union apart: a NIC's network backend),
tuples and lists arrays, paths strings, bytes base64, `StrEnum`s their values (decoded back
into members). Decoding checks every value against its hint and the records' own checks
(`VmSpec.__post_init__`, ...): anything else is a `CallError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import (
    BlockStats,
    ExportRequest,
    IncomingInfo,
    IncomingRequest,
    StartRequest,
    VmEnd,
    VmStatus,
)
from openhosting.hypervisor.spec import HostVmSettings, NbdSource


class CallError(ValueError):
    """A call or an answer that is not what its record says."""


# A server is named by its lowercase UUID: it becomes a directory name on the host (its run
# directory, which `forget` removes), so nothing else may pass.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_server(server: str, *, blank: bool = False) -> None:
    if not (_UUID.fullmatch(server) or (blank and server == "")):
        raise CallError(f"not a server's UUID: {server[:80]!r}")


@dataclass(frozen=True)
class NoArguments:
    """`held`, `unheld`, `detach_all`, `capacity`: nothing to say."""


@dataclass(frozen=True)
class ServerCall:
    """`how_ended`, `powerdown`, `reset`, `resume`, `forget`, `status`, `serial_log`; and the
    first field of every call on one server (its check with it)."""

    server: str

    def __post_init__(self) -> None:
        check_server(self.server)


@dataclass(frozen=True)
class TimedCall(ServerCall):
    """`stop`, `kill`, `stop_unheld`: a server, and how long QEMU may take."""

    timeout: float = 10.0


@dataclass(frozen=True)
class AdoptCall(ServerCall):
    started: float
    timeout: float = 10.0


@dataclass(frozen=True)
class SaveStateCall(ServerCall):
    """`save_state`: the state itself is the answer's body."""

    timeout: float


@dataclass(frozen=True)
class HostSettingsCall:
    vnc_listen: str
    netns: str | None


@dataclass(frozen=True)
class RunDirCall:
    server: str

    def __post_init__(self) -> None:
        check_server(self.server, blank=True)  # blank: the directory of every run directory


@dataclass(frozen=True)
class VncPortCall:
    address: str
    port: int


@dataclass(frozen=True)
class SetCpuCall(ServerCall):
    cpu_mhz: int


@dataclass(frozen=True)
class SetVncPasswordCall(ServerCall):
    password: str | None = dataclasses.field(repr=False)


@dataclass(frozen=True)
class MigrateOutCall:
    """`migrate_out`: the VM of `server` to the target that `prepare_incoming` answered."""

    server: str
    target: IncomingInfo
    timeout: float

    def __post_init__(self) -> None:
        check_server(self.server)
        if self.target.server != self.server:
            raise CallError(f"the target waits for {self.target.server}, not {self.server}")


@dataclass(frozen=True)
class Call:
    """A method's request record and the type of its answer."""

    request: type
    answer: Any


# Every method of `HypervisorDriver` but `listen` (events are a stream: `VmEvent`), and of
# `MigratingDriver`.
CALLS: Mapping[str, Call] = {
    "host_settings": Call(HostSettingsCall, HostVmSettings),
    "run_dir": Call(RunDirCall, Path),
    "vnc_port_free": Call(VncPortCall, bool),
    "start": Call(StartRequest, VmStatus),
    "adopt": Call(AdoptCall, VmStatus | None),
    "how_ended": Call(ServerCall, VmEnd),
    "unheld": Call(NoArguments, list[str]),
    "stop_unheld": Call(TimedCall, None),
    "stop": Call(TimedCall, None),
    "kill": Call(TimedCall, None),
    "powerdown": Call(ServerCall, None),
    "reset": Call(ServerCall, None),
    "resume": Call(ServerCall, None),
    "save_state": Call(SaveStateCall, None),
    "detach_all": Call(NoArguments, None),
    "forget": Call(ServerCall, None),
    "status": Call(ServerCall, VmStatus | None),
    "held": Call(NoArguments, list[str]),
    "held_on_host": Call(NoArguments, list[str]),
    "set_cpu": Call(SetCpuCall, None),
    "set_vnc_password": Call(SetVncPasswordCall, None),
    "blockstats": Call(ServerCall, dict[str, BlockStats]),
    "serial_log": Call(ServerCall, bytes | None),
    # `MigratingDriver`'s (hypervisor/migration.py): a live migration between two agents.
    "prepare_incoming": Call(IncomingRequest, IncomingInfo),
    "migrate_out": Call(MigrateOutCall, None),
    "finish_incoming": Call(TimedCall, VmStatus),
    "abort_incoming": Call(ServerCall, None),
    "cancel_migrate_out": Call(ServerCall, None),
    "end_migrated": Call(TimedCall, None),
}
# The agent's own calls, about its host rather than its driver's VMs: what the host offers,
# measured there (the control plane records it in the host's row at each heartbeat).
HOST_CALLS: Mapping[str, Call] = {
    "capacity": Call(NoArguments, HostCapacity),
}
# The agent's exports of its drives to VMs of other hosts (`ExportingDriver`; served by the
# agent beside its driver: hypervisor/nbd_exports.py). `export_drive`'s record is passed
# whole, with the drive's file as this host finds it.
EXPORT_CALLS: Mapping[str, Call] = {
    "export_drive": Call(ExportRequest, NbdSource),
    "end_exports": Call(ServerCall, None),
    "exports": Call(NoArguments, list[str]),
}

# The methods whose request record is their one argument, passed whole.
WHOLE_RECORD = frozenset({"start", "prepare_incoming"})
# The methods only a `MigratingDriver` has.
MIGRATING = frozenset(
    {
        "prepare_incoming",
        "migrate_out",
        "finish_incoming",
        "abort_incoming",
        "cancel_migrate_out",
        "end_migrated",
    }
)
# The close code of an event stream that another follower replaced: its follower stops.
REPLACED = 4001


def arguments(request: object) -> dict[str, Any]:
    """A request record's fields as the keyword arguments of its method."""
    return {field.name: getattr(request, field.name) for field in dataclasses.fields(request)}  # type: ignore[arg-type]


def encode(value: object) -> Any:
    """`value` (a record, or what a record holds) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {
            field.name: encode(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
        return {"type": type(value).__name__, **encoded}
    if isinstance(value, (tuple, list)):
        return [encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise CallError(f"{type(value).__name__} is not plain data")


def decode(hint: Any, data: Any) -> Any:
    """The value of type `hint` that `data` (from `encode`) stands for; `CallError` if none."""
    try:
        return _decode(hint, data)
    except CallError:
        raise
    except (TypeError, ValueError, KeyError) as error:  # a record's own checks
        raise CallError(f"not a valid {_name(hint)}: {error}") from None


def _decode(hint: Any, data: Any) -> Any:
    if hint is None or hint is type(None):
        return _expect(data is None, hint, data, None)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(typing.get_args(hint), data)
    if origin in (tuple, list):
        items = typing.get_args(hint)
        _expect(isinstance(data, list), hint, data)
        if origin is tuple and items[-1:] != (Ellipsis,) and len(items) != 1:
            # A fixed tuple (`tuple[str, int]`): one hint per place.
            _expect(len(data) == len(items), hint, data)
            return tuple(_decode(item, each) for item, each in zip(items, data, strict=True))
        return origin(_decode(items[0], each) for each in data)
    if origin is dict:
        value_hint = typing.get_args(hint)[1]
        _expect(isinstance(data, dict), hint, data)
        return {str(key): _decode(value_hint, each) for key, each in data.items()}
    if dataclasses.is_dataclass(hint):
        return _decode_record(hint, data)
    if hint is Path:
        return Path(_expect(isinstance(data, str), hint, data, data))
    if hint is bytes:
        _expect(isinstance(data, str), hint, data)
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error:
            raise CallError("not base64") from None
    if hint is float:
        return float(_expect(_is_number(data), hint, data, data))
    if hint is int:
        return _expect(_is_number(data) and not isinstance(data, float), hint, data, data)
    if hint in (str, bool):
        return _expect(type(data) is hint, hint, data, data)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return hint(_expect(type(data) is str, hint, data, data))  # ValueError: not a member
    raise CallError(f"cannot decode {_name(hint)}")


def _decode_union(members: tuple[Any, ...], data: Any) -> Any:
    if data is None and type(None) in members:
        return None
    candidates = [member for member in members if member is not type(None)]
    records: dict[str, Any] = {
        _name(member): member for member in candidates if dataclasses.is_dataclass(member)
    }
    if len(records) > 1:  # told apart by the class's name
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in records:
            raise CallError(f"no {kind!r} among {sorted(records)}")
        return _decode_record(records[kind], data)
    if len(candidates) != 1:
        raise CallError(f"cannot decode a union of {candidates}")
    return _decode(candidates[0], data)


def _decode_record(record: Any, data: Any) -> Any:
    _expect(isinstance(data, dict), record, data)
    if data.get("type", record.__name__) != record.__name__:
        raise CallError(f"a {data.get('type')!r} where a {record.__name__} was expected")
    hints = _hints(record)
    fields = {field.name for field in dataclasses.fields(record)}
    if unknown := set(data) - fields - {"type"}:
        raise CallError(f"{record.__name__} has no {sorted(unknown)}")
    return record(**{name: _decode(hints[name], data[name]) for name in fields if name in data})


@functools.cache
def _hints(record: type) -> dict[str, Any]:
    return typing.get_type_hints(record)


def _is_number(data: Any) -> bool:
    return isinstance(data, (int, float)) and not isinstance(data, bool)


def _expect(ok: bool, hint: Any, data: Any, value: Any = None) -> Any:
    if not ok:
        raise CallError(f"{type(data).__name__} where a {_name(hint)} was expected")
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
