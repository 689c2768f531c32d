"""Validation shared by every object (src/openhosting/model/common.py)."""

import pytest

from openhosting.errors import UsageError
from openhosting.model.common import merge_user_keys


@pytest.mark.parametrize(
    "key", ["user:a b", "user:a\nb", "user:a\rb", "user:a\x00b", "user:\u2028"]
)
def test_a_user_key_name_with_a_space_or_control_character_is_refused(key: str) -> None:
    with pytest.raises(UsageError, match="no spaces or control characters"):
        merge_user_keys({}, {key: "v"})


def test_a_stored_user_key_with_a_space_can_still_be_removed() -> None:
    # Kept by an older daemon, which took such names from JSON bodies.
    assert merge_user_keys({"user:a b": "v", "user:c": "w"}, {"user:a b": ""}) == {"user:c": "w"}


def test_a_user_key_name_may_hold_any_printable_letters() -> None:
    assert merge_user_keys({}, {"user:bemærkning/ünïcode": "v"}) == {"user:bemærkning/ünïcode": "v"}
