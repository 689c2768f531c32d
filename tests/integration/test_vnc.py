"""VNC of servers on real QEMU, spoken to with a tiny RFB 3.8 client (docs/api.md §5, `vnc:*`).

With a password a server has a VNC server that checks it (VNC authentication: a DES-encrypted
challenge); without one it has no VNC at all; `vnc:tls on` wraps it in VeNCrypt X509 with the
platform's CA. The servers here have no drives: VNC needs no guest, so nothing boots.
"""

import asyncio
import contextlib
import os
import socket
import ssl
import stat
import struct
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from openhosting.hypervisor.qemu_driver import QemuDriver
from openhosting.services.platform import Platform
from openhosting.vnc.ports import VNC_BASE_PORT
from openhosting.vnc.tls import vnc_tls_dir
from openhosting.wire.text import parse_properties
from tests.integration.server_helpers import create_server, server_info

VNC_AUTH, VENCRYPT = 2, 19
VENCRYPT_X509_VNC = 261
TIMEOUT = 10


def vnc_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC authentication challenge: DES-ECB with the password as key,
    padded to 8 bytes, each byte's bits reversed (RFB's historical quirk)."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    # Triple DES with three equal keys is single DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


class RfbClient:
    """The start of an RFB 3.8 session: version, security types, authentication."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> "RfbClient":
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()

    async def read(self, count: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(count), TIMEOUT)

    async def security_types(self) -> list[int]:
        """Exchange versions and return the security types the server offers."""
        version = await self.read(12)
        assert version.startswith(b"RFB 003."), version
        self.writer.write(b"RFB 003.008\n")
        count = (await self.read(1))[0]
        if count == 0:
            (length,) = struct.unpack(">I", await self.read(4))
            raise AssertionError(f"VNC server refused: {await self.read(length)!r}")
        return list(await self.read(count))

    async def vnc_auth(self, password: str) -> bool:
        """Answer the challenge of VNC authentication; whether the server accepted it."""
        challenge = await self.read(16)
        self.writer.write(vnc_response(password, challenge))
        (result,) = struct.unpack(">I", await self.read(4))
        return result == 0


async def vnc_login(port: int, password: str) -> bool:
    """Whether the VNC server on `port` lets `password` in (plain VNC authentication)."""
    client = await RfbClient.connect(port)
    try:
        types = await client.security_types()
        assert VNC_AUTH in types, types
        client.writer.write(bytes([VNC_AUTH]))
        return await client.vnc_auth(password)
    finally:
        await client.close()


async def vencrypt_login(port: int, password: str, ca_file: Path) -> bool:
    """VeNCrypt 0.2 X509VNC: TLS checked against the platform CA, then VNC authentication."""
    client = await RfbClient.connect(port)
    try:
        assert await client.security_types() == [VENCRYPT]  # no unencrypted way in
        client.writer.write(bytes([VENCRYPT]))
        assert await client.read(2) == b"\x00\x02"
        client.writer.write(b"\x00\x02")
        assert await client.read(1) == b"\x00"  # version accepted
        count = (await client.read(1))[0]
        subtypes = struct.unpack(f">{count}I", await client.read(4 * count))
        assert VENCRYPT_X509_VNC in subtypes, subtypes
        client.writer.write(struct.pack(">I", VENCRYPT_X509_VNC))
        assert await client.read(1) == b"\x01"
        context = ssl.create_default_context(cafile=str(ca_file))
        # The certificate must name the VNC address and chain to the platform CA.
        await asyncio.wait_for(
            client.writer.start_tls(context, server_hostname="127.0.0.1"), TIMEOUT
        )
        return await client.vnc_auth(password)
    finally:
        await client.close()


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes matched in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def vm_pid(platform: Platform, server: str) -> int:
    return int((platform.servers.run_dir(server) / "qemu.pid").read_text())


async def set_server(client: TestClient, auth: dict[str, str], server: str, body: str) -> None:
    response = await client.post(f"/servers/{server}/set", data=body, headers=auth)
    assert response.status == 200, await response.text()
    assert parse_properties(await response.text())["server"] == server


async def test_vnc_checks_the_password_and_a_live_set_changes_it_and_no_password_no_vnc(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    with_vnc = await create_server(
        client, auth, "name v\ncpu 500\nmem 64\nvnc:ip auto\nvnc:password right1"
    )
    without = await create_server(client, auth, "name n\ncpu 500\nmem 64\nvnc:ip auto")
    port = int(with_vnc.get("vnc:port", 5900))
    assert with_vnc["vnc:ip"] == "127.0.0.1"

    assert await vnc_login(port, "wrong1") is False
    assert await vnc_login(port, "right1") is True
    argv = (platform.servers.run_dir(with_vnc["server"]) / "qemu.argv").read_text()
    assert "right1" not in argv  # set over QMP, never on the command line

    # Without a password: no VNC server, so no listening port at all.
    assert listening_tcp_ports(vm_pid(platform, with_vnc["server"])) == {port}
    assert listening_tcp_ports(vm_pid(platform, without["server"])) == set()
    assert (
        "vnc:port" not in without
        and "-vnc" not in (platform.servers.run_dir(without["server"]) / "qemu.argv").read_text()
    )

    # `set` on the active server changes the password at once.
    await set_server(client, auth, with_vnc["server"], "vnc:password newpw")
    assert await vnc_login(port, "right1") is False
    assert await vnc_login(port, "newpw") is True
    # Unsetting it locks everyone out; the VNC server itself stays until the next start.
    await set_server(client, auth, with_vnc["server"], "vnc:password ")
    assert await vnc_login(port, "newpw") is False
    assert "vnc:password" not in await server_info(client, auth, with_vnc["server"])


async def test_vnc_tls_offers_only_vencrypt_with_a_platform_ca_made_once(
    client: TestClient, auth: dict[str, str], platform: Platform, servers_cleanup: None
) -> None:
    body = "name t\ncpu 500\nmem 64\npersistent true\nvnc:ip auto\nvnc:password tls1\nvnc:tls on"
    info = await create_server(client, auth, body)
    server = info["server"]
    assert info["vnc:tls"] == "on"
    port = int(info.get("vnc:port", 5900))
    tls_dir = vnc_tls_dir(platform.config.state_path)
    files = ("ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem")
    first = {name: (tls_dir / name).read_bytes() for name in files}
    for key in ("ca-key.pem", "server-key.pem"):
        assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(first["ca-cert.pem"])
    x509.load_pem_x509_certificate(first["server-cert.pem"]).verify_directly_issued_by(ca)

    assert await vencrypt_login(port, "wrong1", tls_dir / "ca-cert.pem") is False
    assert await vencrypt_login(port, "tls1", tls_dir / "ca-cert.pem") is True

    # The next start reuses the same CA and certificate.
    assert (await client.post(f"/servers/{server}/stop", headers=auth)).status == 204
    assert (await client.post(f"/servers/{server}/start", headers=auth)).status == 204
    port = int((await server_info(client, auth, server)).get("vnc:port", 5900))
    assert {name: (tls_dir / name).read_bytes() for name in files} == first
    client_view = await RfbClient.connect(port)
    try:
        assert await client_view.security_types() == [VENCRYPT]
    finally:
        await client_view.close()


async def test_a_display_taken_between_its_probe_and_qemus_bind_is_given_up_for_another(
    client: TestClient,
    auth: dict[str, str],
    platform: Platform,
    servers_cleanup: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process of the host binds the display's port after the daemon probed it free
    and before QEMU binds it (two daemons on one host, say): the start claims another
    display and starts QEMU again, instead of failing 500."""
    probes: list[int] = []
    real_probe = QemuDriver.vnc_port_free

    def first_probe_lies(driver: QemuDriver, address: str, port: int) -> bool:
        probes.append(port)
        return len(probes) == 1 or real_probe(driver, address, port)

    monkeypatch.setattr(QemuDriver, "vnc_port_free", first_probe_lies)
    with socket.socket() as holder:
        held = False
        with contextlib.suppress(OSError):  # held already (another test's QEMU): as good
            holder.bind(("127.0.0.1", VNC_BASE_PORT))
            holder.listen()
            held = True
        body = "name v\ncpu 500\nmem 64\npersistent true\nvnc:password pw"
        info = await create_server(client, auth, body)
        assert info["status"] == "active"
        assert probes[0] == VNC_BASE_PORT  # display 0, taken, was tried first
        if held:  # QEMU could not bind it: a second claim, another display
            assert int(info.get("vnc:port", VNC_BASE_PORT)) != VNC_BASE_PORT
            assert "event=server_start_retried" in caplog.text
