"""A drive's settings: sizes an encrypted drive's container can hold."""

import pytest

from openhosting.errors import UsageError
from openhosting.model.drive import (
    MAX_DRIVE_SIZE,
    MAX_ENCRYPTED_SIZE,
    DriveSettings,
    apply_drive_properties,
)
from openhosting.storage.luks import PAYLOAD_OFFSET_SECTORS, SECTOR_SIZE
from openhosting.wire.sizes import MAX_SIZE

LARGEST = str(MAX_SIZE)


def test_the_largest_encrypted_drive_still_fits_in_a_file() -> None:
    assert PAYLOAD_OFFSET_SECTORS * SECTOR_SIZE + MAX_ENCRYPTED_SIZE <= MAX_SIZE
    assert MAX_ENCRYPTED_SIZE % SECTOR_SIZE == 0


@pytest.mark.parametrize(
    "properties",
    [
        {"size": LARGEST},
        {"size": LARGEST, "encryption:cipher": "aes-xts-plain"},
        {"encryption:cipher": "aes-xts-plain", "size": str(MAX_ENCRYPTED_SIZE + 1)},
    ],
)
def test_an_encrypted_drive_larger_than_its_container_can_be_is_refused(
    properties: dict[str, str],
) -> None:
    with pytest.raises(UsageError, match="too large for an encrypted drive"):
        apply_drive_properties(DriveSettings(), properties, creating=True)


def test_growing_an_encrypted_drive_past_the_limit_is_refused() -> None:
    current = DriveSettings(size=1024)
    with pytest.raises(UsageError, match="too large"):
        apply_drive_properties(current, {"size": LARGEST}, creating=False)


def test_a_drive_is_at_most_a_petabyte_whatever_its_file_system_takes() -> None:
    # tmpfs and XFS would hold an 8 EiB file; the platform does not depend on that.
    for cipher in ("none", "aes-xts-plain"):
        largest = {"size": str(MAX_DRIVE_SIZE), "encryption:cipher": cipher}
        assert apply_drive_properties(DriveSettings(), largest, creating=True).size == 1 << 50
        for size in (MAX_DRIVE_SIZE + 1, MAX_SIZE - (1 << 40)):
            with pytest.raises(UsageError, match="size too large"):
                apply_drive_properties(
                    DriveSettings(), {"size": str(size), "encryption:cipher": cipher}, creating=True
                )


def test_a_drive_takes_only_a_tier_the_platform_has() -> None:
    tiers = ("disk", "ssd", "archive")
    created = apply_drive_properties(
        DriveSettings(), {"size": "1", "tier": "archive"}, creating=True, tiers=tiers
    )
    assert created.tier == "archive"
    with pytest.raises(UsageError, match="Invalid tier 'nvme'"):
        apply_drive_properties(DriveSettings(), {"size": "1", "tier": "nvme"}, creating=True)


def test_a_drive_keeps_its_tier() -> None:
    current = DriveSettings(size=1, tier="ssd")
    # Sent back as info shows it: no change, accepted.
    assert apply_drive_properties(current, {"tier": "ssd"}, creating=False).tier == "ssd"
    with pytest.raises(UsageError, match="tier cannot be changed"):
        apply_drive_properties(current, {"tier": "disk"}, creating=False)
