"""What every certificate maker of the platform shares (the VNC CA in vnc/tls.py, the
cluster CA in agent/pki.py): a self-signed CA, a certificate it issues, PEM encodings, key
usages, and writing a key file whole with its mode."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

# Clocks of peers a little behind ours must not see a certificate from the future.
BACKDATE = datetime.timedelta(hours=1)


def self_signed_ca(
    key: CertificateIssuerPrivateKeyTypes,
    name: x509.Name,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> x509.Certificate:
    """A CA's certificate for `key`, named and signed by itself, that signs end entities
    only (no intermediate CAs below it)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def end_entity_builder(
    ca: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes],
    key: CertificateIssuerPublicKeyTypes,
    name: x509.Name,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> x509.CertificateBuilder:
    """A TLS certificate for the public `key` issued by `ca`, to be completed with its
    extended usages and names and signed with the CA's key. It ends no later than the CA's
    (a client would refuse the chain after that anyway)."""
    ca_cert, ca_key = ca
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # QEMU's own sanity check wants both usages on a server certificate.
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def public_der(key: PublicKeyTypes) -> bytes:
    """A public key as DER, to compare a certificate's key with a private key's."""
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA's usages (signing certificates) or an end entity's (TLS)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def key_pem(key: PrivateKeyTypes) -> bytes:
    # QEMU (GnuTLS) reads unencrypted PKCS#8; the file mode is the protection.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_whole(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write `path` whole or not at all, created with `mode` (never readable by others).
    With `exclusive`, an existing `path` is never replaced (`FileExistsError`)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask, and a leftover keeps its own
        with os.fdopen(fd, "wb", closefd=False) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    finally:
        os.close(fd)
    if exclusive:
        try:
            os.link(temporary, path)  # fails if `path` exists, unlike a rename
        finally:
            temporary.unlink()
    else:
        os.replace(temporary, path)
