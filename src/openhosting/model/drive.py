"""A drive's settable configuration (docs/api.md §4): parsed from the wire, validated, merged."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from openhosting.errors import UsageError
from openhosting.model.common import (
    merge_user_keys,
    parse_choice,
    parse_name,
    parse_tags,
    parse_uuid_list,
)
from openhosting.wire.sizes import MAX_SIZE, parse_size

CIPHERS = ("aes-xts-plain", "none")
CLAIM_TYPES = ("exclusive", "shared")
# The tiers of a platform that configures none beyond its drive directory (config.py).
TIERS = ("disk", "ssd")
# An encrypted drive is a LUKS container: its bytes rounded up to 512-byte sectors, after a
# header and key slots of 2 MiB. The file must still fit in an off_t, so its size may not
# reach MAX_SIZE; 16 MiB of room covers the header with margin.
ENCRYPTED_OVERHEAD = 16 * 1024 * 1024
MAX_ENCRYPTED_SIZE = (MAX_SIZE - ENCRYPTED_OVERHEAD) // 512 * 512
# The largest drive the platform makes, whatever its file system would take (ext4 stops at
# 16 TiB, XFS and tmpfs near 8 EiB): 1 PiB, far beyond any real disk image, and small enough
# that an account's sums of sizes stay far from 64-bit limits.
MAX_DRIVE_SIZE = 1 << 50
# Keys that info shows but nobody sets.
INFO_ONLY_KEYS = frozenset(
    {
        "drive",
        "user",
        "status",
        "claimed",
        "imaging",
        "read:bytes",
        "read:requests",
        "write:bytes",
        "write:requests",
    }
)


@dataclass(frozen=True)
class DriveSettings:
    """What a user chooses about a drive."""

    name: str = ""
    size: int = 0
    claim_type: str = "exclusive"
    readers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_keys: dict[str, str] = field(default_factory=dict)
    avoid: tuple[str, ...] = ()
    cipher: str = "aes-xts-plain"
    tier: str = "disk"


def apply_drive_properties(
    current: DriveSettings,
    properties: dict[str, str],
    *,
    creating: bool,
    tiers: Sequence[str] = TIERS,
) -> DriveSettings:
    """`current` with the keys of a create or set body applied; UsageError names a bad key.
    `tiers` are the storage tiers the platform has."""
    changes: dict[str, object] = {}
    user_updates: dict[str, str] = {}
    for key, value in properties.items():
        if key == "name":
            changes["name"] = parse_name(value)
        elif key == "size":
            changes["size"] = parse_size(value, "size")
        elif key == "claim:type":
            changes["claim_type"] = parse_choice(value, key, CLAIM_TYPES)
        elif key == "readers":
            changes["readers"] = parse_uuid_list(value, "reader")
        elif key in ("tags", "tag"):
            changes["tags"] = parse_tags(value)
        elif key == "avoid":
            # Recorded as given: with one host there is nothing to place apart, and real
            # clients send placeholders (jclouds' samples say `avoid avoid1`).
            changes["avoid"] = parse_tags(value)
        elif key == "encryption:cipher":
            cipher = parse_choice(value, key, CIPHERS)
            if not creating and cipher != current.cipher:
                raise UsageError("encryption:cipher cannot be changed once a drive is created")
            changes["cipher"] = cipher
        elif key == "tier":
            tier = parse_choice(value, key, tuple(tiers))
            # A drive's file lives in its tier's directory (another file system): a new tier
            # would be a copy, which imaging into a new drive of that tier already is.
            if not creating and tier != current.tier:
                raise UsageError(
                    "tier cannot be changed once a drive is created: image the drive into a"
                    f" new drive of tier {tier}"
                )
            changes["tier"] = tier
        elif key.startswith("user:"):
            user_updates[key] = value
        elif key in INFO_ONLY_KEYS:
            raise UsageError(f"Key {key} cannot be set")
        else:
            raise UsageError(f"Unknown key {key} for a drive")
    if creating and "size" not in properties:
        raise UsageError("Missing key size: a new drive needs a size")
    if user_updates:
        changes["user_keys"] = merge_user_keys(current.user_keys, user_updates)
    settings = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
    if settings.cipher != "none" and settings.size > MAX_ENCRYPTED_SIZE:
        raise UsageError(
            f"Invalid size {settings.size}: size too large for an encrypted drive"
            f" (at most {MAX_ENCRYPTED_SIZE} bytes)"
        )
    if settings.size > MAX_DRIVE_SIZE:
        raise UsageError(
            f"Invalid size {settings.size}: size too large (at most {MAX_DRIVE_SIZE} bytes, 1024T)"
        )
    return settings
