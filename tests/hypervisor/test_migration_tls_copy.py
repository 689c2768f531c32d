"""The copy of a host's migration TLS files that a VM's QEMU loads as its own account
(migration.qemu_copy): readable by that account only, gone once loaded, and never written
or chowned through what QEMU could plant in its run directory. Real files; root for chown."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import (
    DH_PARAMS,
    FFDHE2048_PEM,
    MigrationTls,
    TlsLoad,
    qemu_copy,
)

NOBODY = (65534, 65534)
HOST_FILES = [
    "ca-cert.pem",
    "client-cert.pem",
    "client-key.pem",
    "server-cert.pem",
    "server-key.pem",
]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")


def host_tls(tmp_path: Path) -> MigrationTls:
    directory = tmp_path / "migration-tls-of-host"
    directory.mkdir(mode=0o700)
    for name in HOST_FILES:
        (directory / name).write_text(f"{name} of the host")
        (directory / name).chmod(0o600)
    return MigrationTls(directory, "hv-a")


def test_the_copy_is_the_vms_account_s_alone_and_gone_afterwards(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load = TlsLoad(host_tls(tmp_path), run_dir, NOBODY)

    with qemu_copy(load) as copy:
        assert copy.parent == run_dir
        assert sorted(path.name for path in copy.iterdir()) == sorted([*HOST_FILES, DH_PARAMS])
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


def test_a_target_s_qemu_gets_rfc_7919_s_ffdhe2048_rather_than_making_a_group(
    tmp_path: Path,
) -> None:
    """Without `dh-params.pem` QEMU makes 2048-bit DH parameters at each server load (most
    of a second of CPU at each migration's target); the group given is the RFC's."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with qemu_copy(TlsLoad(host_tls(tmp_path), run_dir, NOBODY)) as copy:
        assert (copy / DH_PARAMS).read_bytes() == FFDHE2048_PEM

    body = b"".join(FFDHE2048_PEM.splitlines()[1:-1])
    der = base64.b64decode(body)
    # PKCS #3 DHParameter: SEQUENCE { INTEGER p (256 bytes after a 0), INTEGER g }
    assert der[:9] == bytes.fromhex("308201080282010100") and der[265:] == bytes.fromhex("020102")
    assert int.from_bytes(der[9:265]) == rfc_7919_ffdhe2048_prime()


def rfc_7919_ffdhe2048_prime() -> int:
    """p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1 (RFC 7919, A.1)."""
    guard = 64  # bits below the floor, for the series' rounding
    # e = sum of 1/k!, in fixed point: each term the one before divided by k.
    total, term, k = 0, 1 << (1918 + guard), 0
    while term:
        total += term
        k += 1
        term //= k
    return 2**2048 - 2**1984 + ((total >> guard) + 560316) * 2**64 - 1
