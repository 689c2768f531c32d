"""The copy of a host's migration TLS files that a VM's QEMU loads as its own account
(migration.qemu_copy): readable by that account only, gone once loaded, and never written
or chowned through what QEMU could plant in its run directory. Real files; root for chown."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import MigrationTls, TlsLoad, qemu_copy

NOBODY = (65534, 65534)
FILES = ["ca-cert.pem", "client-cert.pem", "client-key.pem", "server-cert.pem", "server-key.pem"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")


def host_tls(tmp_path: Path) -> MigrationTls:
    directory = tmp_path / "migration-tls-of-host"
    directory.mkdir(mode=0o700)
    for name in FILES:
        (directory / name).write_text(f"{name} of the host")
        (directory / name).chmod(0o600)
    return MigrationTls(directory, "hv-a")


def test_the_copy_is_the_vms_account_s_alone_and_gone_afterwards(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load = TlsLoad(host_tls(tmp_path), run_dir, NOBODY)

    with qemu_copy(load) as copy:
        assert copy.parent == run_dir
        assert sorted(path.name for path in copy.iterdir()) == FILES
        for path in (copy, *copy.iterdir()):
            info = path.lstat()
            assert (info.st_uid, info.st_gid) == NOBODY
            assert stat.S_IMODE(info.st_mode) == (0o700 if path == copy else 0o600)
        assert (copy / "server-key.pem").read_text() == "server-key.pem of the host"

    assert list(run_dir.iterdir()) == []
    # The host's own files stay root's.
    assert all(path.stat().st_uid == 0 for path in load.tls.directory.iterdir())


def test_a_link_planted_where_the_copy_goes_leads_nowhere(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "server-key.pem").write_text("the host's own file")
    (run_dir / "migration-tls").symlink_to(elsewhere)

    with qemu_copy(TlsLoad(host_tls(tmp_path), run_dir, NOBODY)) as copy:
        assert not copy.is_symlink() and copy.lstat().st_uid == NOBODY[0]

    assert (elsewhere / "server-key.pem").read_text() == "the host's own file"
    assert [path.name for path in elsewhere.iterdir()] == ["server-key.pem"]
    assert elsewhere.stat().st_uid == 0 and (elsewhere / "server-key.pem").stat().st_uid == 0
    assert list(run_dir.iterdir()) == []


def test_a_run_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "run").symlink_to(real)

    with (
        pytest.raises(HypervisorError, match="cannot copy the migration TLS files"),
        qemu_copy(TlsLoad(host_tls(tmp_path), tmp_path / "run", NOBODY)),
    ):
        pass
    assert list(real.iterdir()) == []
