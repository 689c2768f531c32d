"""The platform's VNC TLS credentials: made once, reused, renewed only when they no longer fit."""

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from openhosting.hypervisor.errors import HypervisorError
from openhosting.vnc.tls import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    ensure_vnc_tls,
    vnc_tls_dir,
)

FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)


def contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def certificate(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / name).read_bytes())


def test_first_use_makes_a_ca_and_a_server_certificate_qemu_accepts(tmp_path: Path) -> None:
    directory = ensure_vnc_tls(vnc_tls_dir(tmp_path / "state"), ["127.0.0.1"])
    assert directory == (tmp_path / "state" / "vnc-tls").resolve()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for key in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600
    ca, server = certificate(directory, CA_CERT), certificate(directory, SERVER_CERT)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    # What QEMU's certificate checks demand of a server certificate.
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    purposes = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in purposes
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def test_later_uses_reuse_everything(tmp_path: Path) -> None:
    directory = ensure_vnc_tls(tmp_path / "tls", ["127.0.0.1"])
    first = contents(directory)
    ensure_vnc_tls(directory, ["127.0.0.1"])
    assert contents(directory) == first


def test_a_new_vnc_address_gets_a_new_server_certificate_from_the_same_ca(
    tmp_path: Path,
) -> None:
    directory = ensure_vnc_tls(tmp_path / "tls", ["127.0.0.1"])
    first = contents(directory)
    ensure_vnc_tls(directory, ["192.0.2.7"])
    second = contents(directory)
    assert (second[CA_CERT], second[CA_KEY]) == (first[CA_CERT], first[CA_KEY])
    assert second[SERVER_KEY] != first[SERVER_KEY]
    server = certificate(directory, SERVER_CERT)
    server.verify_directly_issued_by(certificate(directory, CA_CERT))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.7" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def test_a_lost_server_key_is_replaced_and_a_lost_ca_replaces_everything(
    tmp_path: Path,
) -> None:
    directory = ensure_vnc_tls(tmp_path / "tls", ["127.0.0.1"])
    first = contents(directory)
    (directory / SERVER_KEY).unlink()
    ensure_vnc_tls(directory, ["127.0.0.1"])
    assert contents(directory)[CA_KEY] == first[CA_KEY]
    assert contents(directory)[SERVER_KEY] != first[SERVER_KEY]
    (directory / CA_KEY).unlink()
    ensure_vnc_tls(directory, ["127.0.0.1"])
    again = contents(directory)
    assert again[CA_CERT] != first[CA_CERT]
    certificate(directory, SERVER_CERT).verify_directly_issued_by(certificate(directory, CA_CERT))


def test_an_unreadable_ca_is_a_hypervisor_error(tmp_path: Path) -> None:
    directory = ensure_vnc_tls(tmp_path / "tls", ["127.0.0.1"])
    (directory / CA_CERT).write_text("not a certificate")
    with pytest.raises(HypervisorError, match="VNC TLS"):
        ensure_vnc_tls(directory, ["127.0.0.1"])


def test_a_server_key_that_does_not_match_its_certificate_is_replaced(tmp_path: Path) -> None:
    directory = ensure_vnc_tls(tmp_path / "tls", ["127.0.0.1"])
    other = ensure_vnc_tls(tmp_path / "other", ["127.0.0.1"])
    (directory / SERVER_KEY).write_bytes((other / SERVER_KEY).read_bytes())
    ensure_vnc_tls(directory, ["127.0.0.1"])
    assert (directory / SERVER_KEY).read_bytes() != (other / SERVER_KEY).read_bytes()
