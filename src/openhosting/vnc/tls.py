"""The platform's VNC TLS credentials (`vnc:tls on`): one CA and one server certificate.

QEMU's `tls-creds-x509` object reads a directory holding `ca-cert.pem`, `server-cert.pem` and
`server-key.pem` (`VncSpec.tls_dir`); VNC clients trust the platform CA (`ca-cert.pem`, which
the operator hands out) and then see the VeNCrypt X509 security type. Everything is made on
first use with the `cryptography` package and reused afterwards: a new server certificate
(signed by the same CA, so clients keep trusting it) is issued only when the one on disk does
not name a VNC address in use or is about to expire. Private keys are files of mode 0600.

Blocking (key generation, file writes): call `ensure_vnc_tls` from a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openhosting.hypervisor.errors import HypervisorError
from openhosting.pem_files import (
    end_entity_builder,
    key_pem,
    public_der,
    self_signed_ca,
    write_whole,
)

DIRECTORY_NAME = "vnc-tls"
CA_CERT, CA_KEY = "ca-cert.pem", "ca-key.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
LOCK_FILE = ".lock"

# RSA: every VeNCrypt client speaks it (some older ones know no elliptic curves).
RSA_BITS = 2048
CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=730)
# A server certificate this close to its end is replaced at the next VM start.
RENEW_BEFORE = datetime.timedelta(days=30)

_thread_lock = threading.Lock()


def vnc_tls_dir(state_dir: Path) -> Path:
    """Where the credentials of the platform of `state_dir` live; absolute, because QEMU
    reads the directory and has no notion of the daemon's working directory."""
    return (state_dir / DIRECTORY_NAME).resolve()


def ensure_vnc_tls(directory: Path, addresses: Iterable[str]) -> Path:
    """Make sure `directory` holds a CA and a server certificate valid for `addresses` (the
    VNC listen addresses); create or renew what is missing. Returns `directory`.

    Raises `HypervisorError` if the files cannot be written or read back.
    """
    wanted = sorted(set(addresses))
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            now = datetime.datetime.now(datetime.UTC)
            ca = _load_ca(directory)
            if ca is None:
                ca = _create_ca(directory, now)
                renew = True
            else:
                renew = not _server_cert_fits(directory, ca[0], wanted, now)
            if renew:
                _issue_server_cert(directory, ca, wanted, now)
    except (OSError, ValueError) as error:
        raise HypervisorError(
            f"cannot prepare VNC TLS credentials in {directory}: {error}"
        ) from error
    return directory


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two VMs starting at once (threads here, or another daemon process on the same state
    # directory) must not each make a CA and overwrite one another's.
    with _thread_lock:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _load_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{CA_KEY} is not an RSA key")
    return cert, key


def _server_cert_fits(
    directory: Path, ca_cert: x509.Certificate, addresses: list[str], now: datetime.datetime
) -> bool:
    """Whether the server certificate on disk is the CA's, goes with the server key, names
    `addresses` and lives on."""
    try:
        cert = x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / SERVER_KEY).read_bytes(), None)
    except FileNotFoundError:
        return False
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    if public_der(key.public_key()) != public_der(cert.public_key()):
        return False  # a renewal was cut between writing the key and the certificate
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    present |= set(names.get_values_for_type(x509.DNSName))
    return all(str(_address_name(address).value) in present for address in addresses)


def _create_ca(
    directory: Path, now: datetime.datetime
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openhosting"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"openhosting VNC CA {socket.gethostname()}"),
        ]
    )
    cert = self_signed_ca(key, name, now, CA_LIFETIME)
    write_whole(directory / CA_KEY, key_pem(key), 0o600)
    write_whole(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _issue_server_cert(
    directory: Path,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
    addresses: list[str],
    now: datetime.datetime,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    names = [_address_name(address) for address in addresses]
    hostname = x509.DNSName(socket.gethostname())
    if hostname not in names:
        names.append(hostname)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openhosting"),
            x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()),
        ]
    )
    cert = (
        end_entity_builder(ca, key.public_key(), subject, now, SERVER_LIFETIME)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    # Each file is replaced whole; if we are cut between the two, the next use sees that the
    # key and certificate do not match and issues them again.
    write_whole(directory / SERVER_KEY, key_pem(key), 0o600)
    write_whole(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _address_name(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)
