"""What both CAs of the platform share: a self-signed CA and the certificates it issues."""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openhosting.pem_files import BACKDATE, end_entity_builder, self_signed_ca

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CA_LIFETIME = datetime.timedelta(days=100)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed_ca(key, _name("test CA"), NOW, CA_LIFETIME), key


def test_a_ca_signs_itself_signs_only_end_entities_and_is_backdated() -> None:
    cert, _ = _ca()
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.key_encipherment
    assert cert.not_valid_before_utc == NOW - BACKDATE
    assert cert.not_valid_after_utc == NOW + CA_LIFETIME


def test_an_issued_certificate_is_the_cas_is_no_ca_and_ends_no_later_than_the_ca() -> None:
    ca = _ca()
    key = ec.generate_private_key(ec.SECP256R1())
    builder = end_entity_builder(ca, key.public_key(), _name("node"), NOW, CA_LIFETIME * 2)
    cert = builder.sign(ca[1], hashes.SHA256())
    cert.verify_directly_issued_by(ca[0])
    assert cert.issuer == ca[0].subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and not usage.key_cert_sign
    assert cert.not_valid_after_utc == ca[0].not_valid_after_utc
