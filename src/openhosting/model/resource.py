"""A resource's settable keys (docs/api.md §6): IP addresses and VLANs, parsed and merged."""

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from openhosting.errors import MissingError, UsageError
from openhosting.model.common import merge_user_keys, parse_name, parse_tags, parse_uuid

RESOURCE_TYPES = ("ip", "vlan")
# Keys that info shows but nobody sets.
INFO_ONLY_KEYS = frozenset({"type", "user", "netmask", "gateway", "nameserver"})


@dataclass(frozen=True)
class ResourceSettings:
    """What a user chooses about a resource."""

    name: str = ""
    tags: tuple[str, ...] = ()
    user_keys: dict[str, str] = field(default_factory=dict)


def check_type(kind: str) -> str:
    """`kind` when it is a resource type; otherwise the command does not exist (404)."""
    if kind not in RESOURCE_TYPES:
        raise MissingError(f"Resource type {kind!r} could not be found: use ip or vlan")
    return kind


def parse_resource_id(kind: str, text: str) -> str | None:
    """The canonical form of a resource identifier of `kind` (an IPv4 address or a UUID);
    None when it is not one, so that the caller answers `missing`."""
    try:
        if kind == "ip":
            return str(ipaddress.IPv4Address(text.strip()))
        return parse_uuid(text, "vlan")
    except (ValueError, UsageError):
        return None


def apply_resource_properties(
    kind: str, current: ResourceSettings, properties: dict[str, str], *, creating: bool
) -> tuple[ResourceSettings, str | None]:
    """`current` with a create or set body applied, and on create the address asked for
    (`resource`, IPs only). UsageError names a bad key."""
    changes: dict[str, object] = {}
    user_updates: dict[str, str] = {}
    wanted: str | None = None
    for key, value in properties.items():
        if key == "name":
            changes["name"] = parse_name(value)
        elif key in ("tags", "tag"):
            changes["tags"] = parse_tags(value)
        elif key.startswith("user:"):
            user_updates[key] = value
        elif key == "resource" and creating and kind == "ip" and value.strip():
            wanted = parse_resource_id(kind, value)
            if wanted is None:
                raise UsageError(f"Invalid resource {value!r}: expected an IPv4 address")
        elif key == "resource" or key in INFO_ONLY_KEYS:
            raise UsageError(f"Key {key} cannot be set")
        else:
            raise UsageError(f"Unknown key {key} for a resource")
    if user_updates:
        changes["user_keys"] = merge_user_keys(current.user_keys, user_updates)
    return dataclasses.replace(current, **changes), wanted  # type: ignore[arg-type]
