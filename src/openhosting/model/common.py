"""Validation shared by every object: UUIDs, tags, user-defined keys, names."""

import re

from openhosting.errors import UsageError

EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_NAME = 256
MAX_VALUE = 4096
MAX_USER_KEYS = 64


def is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def parse_uuid(text: str, key: str) -> str:
    value = text.strip().lower()
    if not is_uuid(value):
        raise UsageError(f"Invalid {key} {text!r}: expected a UUID")
    return value


def parse_uuid_list(text: str, key: str) -> tuple[str, ...]:
    """Space-separated UUIDs, in order, without repeats."""
    return tuple(dict.fromkeys(parse_uuid(item, key) for item in text.split()))


def parse_name(text: str, key: str = "name") -> str:
    if len(text) > MAX_NAME:
        raise UsageError(f"Invalid {key}: at most {MAX_NAME} characters")
    return text


def parse_tags(text: str) -> tuple[str, ...]:
    tags = tuple(dict.fromkeys(text.split()))
    if sum(len(tag) for tag in tags) > MAX_VALUE:
        raise UsageError(f"Invalid tags: at most {MAX_VALUE} characters")
    return tags


def parse_choice(text: str, key: str, choices: tuple[str, ...]) -> str:
    value = text.strip()
    if value not in choices:
        raise UsageError(f"Invalid {key} {text!r}: expected one of {', '.join(choices)}")
    return value


def check_user_key(key: str, value: str) -> None:
    """A `user:*` key must name something and hold a bounded value."""
    if key == "user:" or len(key) > 128:
        raise UsageError(f"Invalid key {key!r}: user-defined keys are user:NAME")
    # A key is written unescaped before its value's space: a space, a newline or another
    # control character in it (possible in JSON only) would forge lines of the text answer,
    # such as a second `drive` line. Servers' user keys refuse the same.
    if not key.isprintable() or any(char.isspace() for char in key):
        raise UsageError(f"Invalid key {key!r}: a user:NAME has no spaces or control characters")
    if len(value) > MAX_VALUE:
        raise UsageError(f"Invalid {key}: at most {MAX_VALUE} characters")


def merge_user_keys(current: dict[str, str], updates: dict[str, str]) -> dict[str, str]:
    """`user:*` keys after a set: new values replace old ones, an empty value removes a key."""
    merged = dict(current)
    for key, value in updates.items():
        if value or key not in merged:
            check_user_key(key, value)  # a key stored before its name was checked may go
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    if len(merged) > MAX_USER_KEYS:
        raise UsageError(f"Too many user:* keys: at most {MAX_USER_KEYS}")
    return merged
