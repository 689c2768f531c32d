"""The configuration of a server (docs/api.md §5): parsing, validation and its key/value form.

Pure: a mapping of strings (already decoded from the wire) in, a frozen `ServerConfig` out,
or a `UsageError` naming the key that is wrong. Live state (status, counters, leases) is not
configuration and lives elsewhere; `to_properties` gives the configuration part of `info`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from openhosting.errors import UsageError
from openhosting.model.common import MAX_USER_KEYS, check_user_key, parse_name, parse_tags
from openhosting.model.port_block import BlockedPorts, format_block_list, parse_block_list

CPU_MHZ_RANGE = (1, 64000)  # the low end is 1: libcloud sets `cpu 2` (compat case 19)
SMP_RANGE = (1, 64)
MEM_MB_RANGE = (16, 262144)
MHZ_PER_AUTO_CORE = 2000
VNC_PASSWORD_MAX = 8  # VNC authentication uses the first 8 bytes only
NIC_MODELS = ("e1000", "rtl8139", "virtio")
MEDIA = ("disk", "cdrom")

ALIASES = {"vnc": "vnc:ip", "password": "vnc:password"}
REQUIRED = ("name", "cpu", "mem")
# What `set` may change while the server runs (docs/api.md §5); user:* keys too.
LIVE_KEYS = frozenset(
    {"name", "cpu", "persistent", "tags", "vnc:password", "nic:0:block", "nic:1:block"}
)

_SLOT = re.compile(r"ide:[01]:[01]|scsi:0:[0-7]|block:[0-7]")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_DIGITS = re.compile(r"[0-9]+")
_NIC_KEYS = {
    0: ("nic:0:model", "nic:0:dhcp", "nic:0:mac", "nic:0:block"),
    1: ("nic:1:model", "nic:1:vlan", "nic:1:mac", "nic:1:block"),
}
_PLAIN_KEYS = frozenset(
    {"name", "cpu", "smp", "mem", "persistent", "boot", "tags", "vnc:ip", "vnc:password", "vnc:tls"}
    | {key for keys in _NIC_KEYS.values() for key in keys}
)


@dataclass(frozen=True)
class DriveAttachment:
    """A drive in a device slot (`ide:0:0`, `scsi:0:3`, `block:1`), as a disk or a cdrom."""

    slot: str
    drive: str
    media: str = "disk"


@dataclass(frozen=True)
class NicConfig:
    """A network card: `index` 0 is the public NIC (`dhcp`), 1 the VLAN NIC (`vlan`)."""

    index: int
    model: str
    mac: str | None = None
    dhcp: str | None = None  # "auto" or an IPv4 address; None: no address offered
    vlan: str | None = None  # a VLAN resource UUID
    block: tuple[BlockedPorts, ...] = ()  # inbound ports refused (`nic:N:block`)


@dataclass(frozen=True)
class ServerConfig:
    """A validated server configuration. `smp` None means `auto` (see `smp_cores`)."""

    name: str
    cpu: int
    mem: int
    smp: int | None = None
    persistent: bool = False
    drives: tuple[DriveAttachment, ...] = ()
    boot: tuple[str, ...] = ()
    nics: tuple[NicConfig, ...] = ()
    vnc_ip: str | None = None  # "auto" or an IPv4 address
    vnc_password: str | None = None
    vnc_tls: bool = False
    tags: tuple[str, ...] = ()
    user: tuple[tuple[str, str], ...] = ()  # (key without "user:", value), sorted

    @property
    def smp_cores(self) -> int:
        """The number of vCPUs: `smp`, or for `auto` one per 2000 MHz of `cpu`."""
        if self.smp is not None:
            return self.smp
        return max(SMP_RANGE[0], min(SMP_RANGE[1], math.ceil(self.cpu / MHZ_PER_AUTO_CORE)))

    def drive(self, slot: str) -> DriveAttachment | None:
        """The drive attached at `slot`, if any."""
        return next((d for d in self.drives if d.slot == slot), None)

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> ServerConfig:
        """Parse and validate a whole configuration (a `create` body, or a stored one).

        An empty value means the key is unset. Raises `UsageError` naming the wrong key.
        """
        values = {k: v for k, v in _resolve_aliases(props).items() if v.strip()}
        for key in REQUIRED:
            if key not in values:
                raise UsageError(f"{key} is required")
        drives = _parse_drives(values)
        attached = {d.slot for d in drives}
        return cls(
            name=values["name"],
            cpu=_parse_int(values, "cpu", CPU_MHZ_RANGE, "MHz"),
            mem=_parse_int(values, "mem", MEM_MB_RANGE, "MB"),
            smp=_parse_smp(values),
            persistent=_parse_choice(values, "persistent", ("true", "false"), "false") == "true",
            drives=drives,
            boot=_parse_boot(values, attached),
            nics=_parse_nics(values),
            vnc_ip=_parse_ip_or_auto(values, "vnc:ip"),
            vnc_password=_parse_vnc_password(values),
            vnc_tls=_parse_choice(values, "vnc:tls", ("on", "off"), "off") == "on",
            tags=tuple(values.get("tags", "").split()),
            user=tuple(sorted((k[5:], v) for k, v in values.items() if k.startswith("user:"))),
        )

    def merge(self, changes: Mapping[str, str]) -> ServerConfig:
        """The configuration after a `set`: `changes` override, an empty value unsets a key.

        Unsetting a slot also unsets its `:media`; unsetting `nic:N:model` removes the NIC.
        """
        changes = _resolve_aliases(changes)
        props = self.canonical_properties()
        for key, value in changes.items():
            if value.strip():
                props[key] = value
                continue
            dependants = [key]
            if _SLOT.fullmatch(key):
                dependants.append(f"{key}:media")
            elif key.endswith(":model") and key.startswith("nic:"):
                dependants.extend(_NIC_KEYS[int(key.split(":")[1])])
            for gone in dependants:
                props.pop(gone, None)
        merged = ServerConfig.from_properties(props)
        check_sent_text(changes, merged, len(self.user))
        return merged

    def offline_changes(self, changes: Mapping[str, str]) -> list[str]:
        """The keys of a `set` that would change something a running server cannot change."""
        current = self.canonical_properties()
        return sorted(
            key
            for key, value in _resolve_aliases(changes).items()
            if key not in LIVE_KEYS
            and not key.startswith("user:")
            and current.get(key, "") != value.strip()
        )

    def canonical_properties(self) -> dict[str, str]:
        """The configuration as stored: no aliases or derived keys; `from_properties` reads it."""
        props: dict[str, str] = {
            "name": self.name,
            "cpu": str(self.cpu),
            "smp": "auto" if self.smp is None else str(self.smp),
            "mem": str(self.mem),
            "persistent": "true" if self.persistent else "false",
        }
        for attachment in self.drives:
            props[attachment.slot] = attachment.drive
            props[f"{attachment.slot}:media"] = attachment.media
        if self.boot:
            props["boot"] = " ".join(self.boot)
        for nic in self.nics:
            prefix = f"nic:{nic.index}"
            props[f"{prefix}:model"] = nic.model
            for field, value in (("dhcp", nic.dhcp), ("vlan", nic.vlan), ("mac", nic.mac)):
                if value is not None:
                    props[f"{prefix}:{field}"] = value
            if nic.block:
                props[f"{prefix}:block"] = format_block_list(nic.block)
        if self.vnc_ip is not None:
            props["vnc:ip"] = self.vnc_ip
        if self.vnc_password is not None:
            props["vnc:password"] = self.vnc_password
        if self.vnc_tls:
            props["vnc:tls"] = "on"
        if self.tags:
            props["tags"] = " ".join(self.tags)
        for key, value in self.user:
            props[f"user:{key}"] = value
        return props

    def to_properties(self) -> dict[str, str]:
        """The configuration keys of `info`: with `smp:cores`, and `password` beside
        `vnc:password` (clients read one or the other)."""
        props = self.canonical_properties()
        info: dict[str, str] = {}
        for key, value in props.items():
            info[key] = value
            if key == "smp":
                info["smp:cores"] = str(self.smp_cores)
            elif key == "vnc:password":
                info["password"] = value
        return info


def check_sent_text(
    sent: Mapping[str, str], config: ServerConfig, user_keys_before: int = 0
) -> None:
    """The bounds of drives and resources on free text (docs/api.md §2), for what a `create`
    or `set` sent: `name`, `tags`, each `user:*` key, and no more user keys than
    MAX_USER_KEYS (or than the server had). What was stored before these bounds still loads
    (`from_properties` does not check them) and takes other changes. Without them each
    `set` could add 64 KiB of user keys to one server's row, without end."""
    for key, value in sent.items():
        if key == "name":
            parse_name(value)
        elif key == "tags":
            parse_tags(value)
        elif key.startswith("user:") and value.strip():
            check_user_key(key, value)
    if len(config.user) > max(MAX_USER_KEYS, user_keys_before):
        raise UsageError(f"Too many user:* keys: at most {MAX_USER_KEYS}")


def is_slot(key: str) -> bool:
    """Whether `key` names a drive slot (`ide:B:U`, `scsi:0:U`, `block:N`)."""
    return _SLOT.fullmatch(key) is not None


def slot_sort_key(slot: str) -> tuple[int, ...]:
    """Order slots by bus kind (ide, scsi, block) then numbers: `ide:1:0` before `scsi:0:0`."""
    kind, *numbers = slot.split(":")
    return (("ide", "scsi", "block").index(kind), *map(int, numbers))


def _is_known(key: str) -> bool:
    if key in _PLAIN_KEYS or _SLOT.fullmatch(key):
        return True
    if key.endswith(":media") and _SLOT.fullmatch(key.removesuffix(":media")):
        return True
    return key.startswith("user:") and len(key) > 5 and not any(c.isspace() for c in key)


def _resolve_aliases(props: Mapping[str, str]) -> dict[str, str]:
    """Rename `vnc`/`password` to their canonical keys and reject unknown keys."""
    resolved: dict[str, str] = {}
    given: dict[str, str] = {}  # the key each canonical one was first given as
    for key, value in props.items():
        canonical = ALIASES.get(key, key)
        if not _is_known(canonical):
            raise UsageError(f"unknown server configuration key {key!r}")
        if canonical in resolved and resolved[canonical].strip() != value.strip():
            raise UsageError(f"{given[canonical]} and {key} are both given, with different values")
        resolved[canonical] = value
        given.setdefault(canonical, key)
    return resolved


def _parse_int(values: Mapping[str, str], key: str, bounds: tuple[int, int], unit: str) -> int:
    text = values[key].strip()
    low, high = bounds
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise UsageError(
            f"{key} must be a whole number of {unit} from {low} to {high}, not {text!r}"
        )
    return int(text)


def _parse_smp(values: Mapping[str, str]) -> int | None:
    text = values.get("smp", "auto").strip()
    if text == "auto":
        return None
    low, high = SMP_RANGE
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise UsageError(f"smp must be auto or a number from {low} to {high}, not {text!r}")
    return int(text)


def _parse_choice(
    values: Mapping[str, str], key: str, choices: tuple[str, ...], default: str
) -> str:
    text = values.get(key, default).strip()
    if text not in choices:
        raise UsageError(f"{key} must be one of {', '.join(choices)}, not {text!r}")
    return text


def _parse_uuid(values: Mapping[str, str], key: str) -> str:
    text = values[key].strip().lower()
    if not _UUID.fullmatch(text):
        raise UsageError(f"{key} must be a UUID, not {values[key]!r}")
    return text


def _parse_ip_or_auto(values: Mapping[str, str], key: str) -> str | None:
    if key not in values:
        return None
    text = values[key].strip()
    if text == "auto":
        return text
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise UsageError(f"{key} must be auto or an IPv4 address, not {text!r}") from None


def _parse_mac(values: Mapping[str, str], key: str) -> str | None:
    if key not in values:
        return None
    text = values[key].strip().lower()
    # The low bit of the first octet marks multicast, which a NIC cannot own.
    if not _MAC.fullmatch(text) or int(text[:2], 16) & 1 or text == "00:00:00:00:00:00":
        raise UsageError(
            f"{key} must be a unicast MAC address like 52:54:00:12:34:56, not {values[key]!r}"
        )
    return text


def _parse_vnc_password(values: Mapping[str, str]) -> str | None:
    if "vnc:password" not in values:
        return None
    password = values["vnc:password"]
    if len(password.encode()) > VNC_PASSWORD_MAX:
        raise UsageError(f"vnc:password must be at most {VNC_PASSWORD_MAX} characters")
    if not password.isprintable():
        raise UsageError("vnc:password must be printable characters")
    return password


def _parse_drives(values: Mapping[str, str]) -> tuple[DriveAttachment, ...]:
    drives: list[DriveAttachment] = []
    used: dict[str, str] = {}
    for key in values:
        if key.endswith(":media") and key.removesuffix(":media") not in values:
            raise UsageError(f"{key} is set but {key.removesuffix(':media')} has no drive")
        if not _SLOT.fullmatch(key):
            continue
        drive = _parse_uuid(values, key)
        if drive in used:
            # QEMU cannot open one file twice for writing; the API has no such use.
            raise UsageError(f"drive {drive} is in both {used[drive]} and {key}")
        used[drive] = key
        media = _parse_choice(values, f"{key}:media", MEDIA, "disk")
        drives.append(DriveAttachment(slot=key, drive=drive, media=media))
    return tuple(sorted(drives, key=lambda d: slot_sort_key(d.slot)))


def _parse_boot(values: Mapping[str, str], attached: set[str]) -> tuple[str, ...]:
    slots = values.get("boot", "").split()
    for position, slot in enumerate(slots):
        if not _SLOT.fullmatch(slot):
            raise UsageError(f"boot must list device slots like ide:0:0, not {slot!r}")
        if slot not in attached:
            raise UsageError(f"boot names {slot}, which has no drive")
        if slot in slots[:position]:
            raise UsageError(f"boot lists {slot} twice")
    return tuple(slots)


def _parse_nics(values: Mapping[str, str]) -> tuple[NicConfig, ...]:
    nics: list[NicConfig] = []
    for index, (model_key, address_key, mac_key, block_key) in _NIC_KEYS.items():
        if model_key not in values:
            for key in (address_key, mac_key, block_key):
                if key in values:
                    raise UsageError(f"{key} is set but {model_key} is not")
            continue
        model = _parse_choice(values, model_key, NIC_MODELS, "e1000")
        nics.append(
            NicConfig(
                index=index,
                model=model,
                mac=_parse_mac(values, mac_key),
                dhcp=_parse_ip_or_auto(values, address_key) if index == 0 else None,
                vlan=_parse_uuid(values, address_key)
                if index == 1 and address_key in values
                else None,
                block=parse_block_list(values.get(block_key, ""), block_key),
            )
        )
    return tuple(nics)
