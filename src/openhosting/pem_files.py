"""What every certificate maker of the platform shares (the VNC CA in vnc/tls.py, the
cluster CA in agent/pki.py): PEM encodings, key usages, and writing a key file whole with its
mode."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes


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
