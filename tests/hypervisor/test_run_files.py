"""What the daemon writes into a VM's run directory (QEMU's account owns it) is never written
through a link that a QEMU taken over by its guest left there."""

import os
import stat
from pathlib import Path

import pytest

from openhosting.hypervisor.qemu_driver import _write_secrets
from openhosting.hypervisor.run_files import DIRECTORY_FLAGS, write_new_file
from openhosting.hypervisor.spec import DriveSecret

HOST_FILE = b"a file of the host's own\n"


def test_a_drive_secret_replaces_a_planted_link_and_leaves_its_target_alone(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "shadow"
    victim.write_bytes(HOST_FILE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    secret = run_dir / "secret-ide-0-0"
    secret.symlink_to(victim)  # left by the VM's previous QEMU

    _write_secrets((DriveSecret(secret, b"passphrase"),))

    assert victim.read_bytes() == HOST_FILE  # truncated and overwritten on the code before
    assert not secret.is_symlink() and secret.read_bytes() == b"passphrase"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_secret_is_not_written_into_a_run_directory_that_is_a_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.symlink_to(elsewhere)
    with pytest.raises(OSError):
        _write_secrets((DriveSecret(run_dir / "secret-ide-0-0", b"passphrase"),))
    assert list(elsewhere.iterdir()) == []


def test_a_new_file_replaces_an_old_one_and_is_of_its_owner(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old and longer")
    directory = os.open(tmp_path, DIRECTORY_FLAGS)
    try:
        write_new_file(directory, "f", b"new", owner=(os.getuid(), os.getgid()))
    finally:
        os.close(directory)
    assert (tmp_path / "f").read_bytes() == b"new"
    assert (tmp_path / "f").stat().st_uid == os.getuid()
