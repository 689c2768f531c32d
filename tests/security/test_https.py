"""HTTPS: the daemon serves TLS when given a certificate and key; drive reads still work
(sendfile cannot encrypt, so they go through the copying path)."""

import datetime
import os
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed.daemon_process import DaemonProcess, create_user


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30, check=False
    )


def test_https_serves_the_api_and_drive_bytes(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state = tmp_path / "state"
    env = {"OH_API_TLS_CERT": str(cert), "OH_API_TLS_KEY": str(key)}
    daemon = DaemonProcess(state, tmp_path / "daemon.log", env=env)
    try:
        auth = create_user(state, timeout=30).auth
        url = f"https://127.0.0.1:{daemon.port}"
        made = curl("--cacert", str(cert), "-u", auth, "--data-binary",
                    "size 3000000\nencryption:cipher none", f"{url}/drives/create")  # fmt: skip
        assert made.returncode == 0, made.stderr
        drive = dict(line.split(" ", 1) for line in made.stdout.decode().splitlines())["drive"]
        payload = os.urandom(3000000)
        (tmp_path / "payload").write_bytes(payload)
        written = curl("--cacert", str(cert), "-u", auth, "-T", str(tmp_path / "payload"),
                       "-X", "POST", "-H", "Expect:", f"{url}/drives/{drive}/write")  # fmt: skip
        assert written.returncode == 0, written.stderr
        read = curl("--cacert", str(cert), "-u", auth, f"{url}/drives/{drive}/read")
        assert read.stdout == payload
        plain = curl("-u", auth, f"http://127.0.0.1:{daemon.port}/drives/list")
        assert plain.returncode != 0 or b"drive" not in plain.stdout
    finally:
        daemon.stop()
