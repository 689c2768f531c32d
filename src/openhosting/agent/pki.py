"""The cluster's mutual TLS: one cluster CA, and one certificate per node naming its role.

`openhosting-admin cluster init` makes the CA and the control plane's certificate in
`<state_dir>/cluster/`; `openhosting-admin host add NAME --out DIR` issues a host agent's
certificate and writes the agent's bundle (the CA's certificate, its own certificate and key)
to DIR, to be copied to that host. Every file is mode 0600 in a 0700 directory, and nothing is
ever overwritten: a second `cluster init` is refused (a new CA would cut every agent off).

A certificate says who its holder is twice: its role in the subject's organizational unit
(`host` or `control`: only the control plane may call an agent), and its name as common name
and DNS name (`host` certificates only: the control plane calls the agent of host A with
server name A, so the agent of host B cannot answer for A).

ECDSA P-256 keys: only the platform's own nodes speak this TLS, and such keys are made in
microseconds (the VNC CA uses RSA for old VNC clients).

Blocking (key generation, file writes): for the admin tool, or worker threads.
"""

from __future__ import annotations

import datetime
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openhosting.pem_files import end_entity_builder, key_pem, self_signed_ca, write_whole

HOST, CONTROL = "host", "control"
ROLES = (HOST, CONTROL)
# The control plane's name in its certificate; no host may take it.
CONTROL_NAME = "control"

CLUSTER_DIRECTORY = "cluster"
CA_CERT, CA_KEY = "ca-cert.pem", "ca-key.pem"
# A node's certificate and key: `control-…` in the cluster directory, `host-…` in a bundle.
CERT, KEY = "{role}-cert.pem", "{role}-key.pem"

CA_LIFETIME = datetime.timedelta(days=3650)
NODE_LIFETIME = datetime.timedelta(days=825)
ORGANIZATION = "openhosting cluster"

# A host's name: a lowercase DNS name (it is the TLS server name the control plane asks for).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_NAME = 253


class ClusterTlsError(Exception):
    """A cluster CA or certificate that cannot be made, read or used; says which and why."""


@dataclass(frozen=True)
class Bundle:
    """The files a node presents and trusts: the cluster CA's certificate, its own
    certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path, role: str) -> Bundle:
        return cls(
            directory / CA_CERT,
            directory / CERT.format(role=role),
            directory / KEY.format(role=role),
        )


def cluster_dir(state_path: Path) -> Path:
    return state_path / CLUSTER_DIRECTORY


def control_bundle(state_path: Path) -> Bundle:
    """The control plane's files, made by `cluster init`."""
    return Bundle.in_directory(cluster_dir(state_path), CONTROL)


def host_bundle(directory: Path) -> Bundle:
    """A host agent's files, as `host add` writes them."""
    return Bundle.in_directory(directory, HOST)


def is_dns_name(name: str) -> bool:
    """Whether `name` is a lowercase DNS name (what TLS can ask for as a server name)."""
    return 0 < len(name) <= MAX_NAME and _NAME.fullmatch(name) is not None


def check_host_name(name: str) -> str:
    """`name` if it can name a host in the cluster, else `ClusterTlsError` saying why."""
    if not is_dns_name(name):
        raise ClusterTlsError(
            f"Invalid host name {name[:80]!r}: use a lowercase DNS name (letters, digits,"
            f" hyphens and dots, at most {MAX_NAME} characters)"
        )
    if name == CONTROL_NAME:
        raise ClusterTlsError(f"Invalid host name {name!r}: it is the control plane's")
    return name


def init_cluster(state_path: Path) -> Bundle:
    """Make the cluster CA and the control plane's certificate in the state directory;
    refused if a CA is there already. Returns the control plane's bundle."""
    directory = cluster_dir(state_path)
    ca_key_path, ca_cert_path = directory / CA_KEY, directory / CA_CERT
    if ca_key_path.exists() or ca_cert_path.exists():
        raise ClusterTlsError(
            f"A cluster CA exists already in {directory}: refusing to replace it (every"
            " agent trusts it)"
        )
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "openhosting cluster CA"),
        ]
    )
    cert = self_signed_ca(key, name, now, CA_LIFETIME)
    _make_directory(directory)
    write_whole(ca_key_path, key_pem(key), 0o600, exclusive=True)
    write_whole(ca_cert_path, _pem(cert), 0o600, exclusive=True)
    bundle = control_bundle(state_path)
    _issue(bundle, (cert, key), CONTROL, CONTROL_NAME)
    return bundle


def add_host(state_path: Path, name: str, out: Path) -> Bundle:
    """Issue the certificate of host `name` and write its agent's bundle to `out` (made if
    missing; refused where a bundle is already)."""
    check_host_name(name)
    ca = _load_ca(cluster_dir(state_path))
    bundle = host_bundle(out)
    if existing := [path for path in (bundle.ca_cert, bundle.cert, bundle.key) if path.exists()]:
        raise ClusterTlsError(f"Refusing to overwrite {existing[0]}")
    # A directory of its own: one that holds other files (`.`, /tmp) is someone else's, and
    # would be made 0700 for the key, shutting them out.
    if out.is_dir() and any(out.iterdir()):
        raise ClusterTlsError(
            f"Cannot write the bundle to {out}: it holds other files; name a new directory"
        )
    try:
        _make_directory(out)
        write_whole(bundle.ca_cert, _pem(ca[0]), 0o600, exclusive=True)
        _issue(bundle, ca, HOST, name)
    except OSError as error:  # `out` a file, under one, read-only: the operator's to fix
        raise ClusterTlsError(f"Cannot write the bundle to {out}: {error}") from None
    return bundle


def role_of(cert: x509.Certificate) -> tuple[str | None, str | None]:
    """The role and the name a certificate of the cluster CA gives its holder."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    role = str(units[0].value) if units else None
    return (role if role in ROLES else None), (str(names[0].value) if names else None)


def host_distinguished_name(name: str) -> str:
    """The subject of host `name`'s certificate as QEMU's TLS layer prints a peer's (GnuTLS:
    the attributes in the certificate's order, `O=…,OU=host,CN=NAME`): what QEMU's
    `authz-simple` compares a client with (hypervisor/nbd_exports.py)."""
    return f"O={ORGANIZATION},OU={HOST},CN={check_host_name(name)}"


def peer_role(peercert: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The role and name of a TLS peer, from `SSLSocket.getpeercert()` (verified by then)."""
    role = name = None
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "organizationalUnitName":
                role = value if value in ROLES else None
            elif key == "commonName":
                name = value
    return role, name


def agent_context(bundle: Bundle) -> ssl.SSLContext:
    """The agent's server side: its host certificate, and a client certificate of the
    cluster CA required (which role it has is checked per request: agent/server.py)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_readable(bundle.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, bundle)
    return context


def control_context(bundle: Bundle) -> ssl.SSLContext:
    """The control plane's client side: its control certificate; the agent's certificate
    must be the cluster CA's and name the host asked for (the server name of each call)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_readable(bundle.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    # Only the DNS name counts: the control certificate's common name is no host's name.
    context.hostname_checks_common_name = False
    _load_chain(context, bundle)
    return context


# -- inside ------------------------------------------------------------------------------


def _issue(
    bundle: Bundle,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    role: str,
    name: str,
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name_attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ]
    builder = end_entity_builder(
        ca, key.public_key(), x509.Name(name_attributes), now, NODE_LIFETIME
    ).add_extension(
        # Both ends: agents will call the control plane too (heartbeats, next slices).
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    )
    if role == HOST:
        # The server name the control plane checks: a host's certificate names that host.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    cert = builder.sign(ca[1], hashes.SHA256())
    write_whole(bundle.key, key_pem(key), 0o600, exclusive=True)
    write_whole(bundle.cert, _pem(cert), 0o600, exclusive=True)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        raise ClusterTlsError(
            f"No cluster CA in {directory}: run `openhosting-admin cluster init` first"
        ) from None
    except (OSError, ValueError) as error:
        raise ClusterTlsError(f"Cannot read the cluster CA in {directory}: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ClusterTlsError(f"{directory / CA_KEY} is not the cluster CA's key")
    return cert, key


def _load_chain(context: ssl.SSLContext, bundle: Bundle) -> None:
    try:
        context.load_cert_chain(bundle.cert, bundle.key)
    except (OSError, ssl.SSLError) as error:
        raise ClusterTlsError(f"Cannot load {bundle.cert} with its key: {error}") from None


def _readable(path: Path) -> str:
    if not path.is_file():
        raise ClusterTlsError(f"No cluster CA certificate at {path}")
    return str(path)


def _make_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
