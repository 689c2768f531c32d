"""The test bed's serial-log reading: what follows a marker is read from whole lines only (a
cluster test once read `192.0.2.` for `192.0.2.11`: the relay had logged part of the line)."""

import asyncio
from pathlib import Path

import pytest

from testbed.serial_console import wait_for_matches

LEASE = r"OH-LEASE \S+ \S+ ([0-9.]+)"


def test_a_line_still_being_printed_is_not_matched_until_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("boot\nOH-LEASE eth0 52:54:00:00:00:01 192.0.2.")
    with pytest.raises(TimeoutError):
        asyncio.run(wait_for_matches(log, LEASE, timeout=0.3))
    with log.open("a") as rest:
        rest.write("11\r\n# ")
    found = asyncio.run(wait_for_matches(log, LEASE, timeout=0.3))
    assert [lease.group(1) for lease in found] == ["192.0.2.11"]


def test_matches_are_counted_over_the_rotated_files_too(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    (tmp_path / "serial.log.1").write_text("OH-LEASE eth0 m 10.0.0.1\n")
    log.write_text("OH-LEASE eth0 m 10.0.0.2\nOH-LEASE eth0 m 10.0.0.")
    found = asyncio.run(wait_for_matches(log, LEASE, count=2, timeout=0.3))
    assert [lease.group(1) for lease in found] == ["10.0.0.1", "10.0.0.2"]
