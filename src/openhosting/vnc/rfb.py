"""The start of RFB (the VNC protocol, RFC 6143) on both sides of the web console's bridge.

Towards QEMU the daemon is the client: `log_in` answers QEMU's VNC authentication with the
server's password (inside VeNCrypt X509 when the server has `vnc:tls on`), so the password
never leaves the host. Towards the browser the daemon is the server: `greet_without_auth`
offers security type None, since whoever holds the console token has been let in already.
Past these greetings the two streams meet unchanged: the browser's ClientInit goes to QEMU
and QEMU's ServerInit comes back.

Protocol, not transport: the browser side reads and writes through two callables, so a
WebSocket or a socket can carry it.
"""

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VERSION_3_8 = b"RFB 003.008\n"
NONE, VNC_AUTH, VENCRYPT = 1, 2, 19
VENCRYPT_VERSION = b"\x00\x02"  # 0.2
VENCRYPT_X509_VNC = 261
# VNC passwords are at most 8 characters: the DES key.
PASSWORD_BYTES = 8

ReadExactly = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


class RfbError(Exception):
    """The other side did not speak RFB as expected, or refused us."""


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC authentication challenge: the challenge DES-encrypted (ECB) with
    the password as key, padded to 8 bytes, each key byte's bits reversed (RFB's quirk)."""
    padded = password.encode()[:PASSWORD_BYTES].ljust(PASSWORD_BYTES, b"\0")
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in padded)
    # Triple DES with three equal keys is single DES, which `cryptography` no longer offers.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


# -- towards QEMU: the client side ----------------------------------------------------------


async def log_in(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    password: str,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> None:
    """Speak RFB 3.8 as a client up to a passed SecurityResult: VNC authentication with
    `password`, inside VeNCrypt X509 (with `tls`, checking the certificate for
    `server_hostname`) when the server offers only that. RfbError if anything fails."""

    async def read(count: int) -> bytes:
        try:
            return await reader.readexactly(count)
        except asyncio.IncompleteReadError:
            raise RfbError("VNC closed the connection during the greeting") from None

    version = await read(12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"Not a VNC server: {version!r}")
    writer.write(VERSION_3_8)
    count = (await read(1))[0]
    if count == 0:
        (length,) = struct.unpack(">I", await read(4))
        reason = (await read(length)).decode(errors="replace")
        raise RfbError(f"VNC refused the connection: {reason}")
    offered = set(await read(count))
    if VNC_AUTH in offered:
        writer.write(bytes([VNC_AUTH]))
    elif VENCRYPT in offered and tls is not None:
        writer.write(bytes([VENCRYPT]))
        await _vencrypt_x509(read, writer, tls, server_hostname)
    else:
        raise RfbError(f"VNC offers no security type the console speaks: {sorted(offered)}")
    challenge = await read(16)
    writer.write(vnc_auth_response(password, challenge))
    await writer.drain()
    (result,) = struct.unpack(">I", await read(4))
    if result != 0:
        raise RfbError("VNC refused the server's password")


async def _vencrypt_x509(
    read: ReadExactly,
    writer: asyncio.StreamWriter,
    tls: ssl.SSLContext,
    server_hostname: str | None,
) -> None:
    """VeNCrypt 0.2 with the X509VNC subtype: version, subtype, then TLS on the socket."""
    if await read(2) != VENCRYPT_VERSION:
        raise RfbError("VNC speaks a VeNCrypt version other than 0.2")
    writer.write(VENCRYPT_VERSION)
    if (await read(1))[0] != 0:
        raise RfbError("VNC refused VeNCrypt 0.2")
    count = (await read(1))[0]
    subtypes = struct.unpack(f">{count}I", await read(4 * count))
    if VENCRYPT_X509_VNC not in subtypes:
        raise RfbError(f"VNC offers no VeNCrypt subtype the console speaks: {subtypes}")
    writer.write(struct.pack(">I", VENCRYPT_X509_VNC))
    if (await read(1))[0] != 1:
        raise RfbError("VNC refused VeNCrypt X509VNC")
    await writer.drain()
    try:
        # The same reader goes on reading, now through TLS.
        await writer.start_tls(tls, server_hostname=server_hostname)
    except (ssl.SSLError, ConnectionError) as error:
        raise RfbError(f"TLS with VNC failed: {error}") from None


# -- towards the browser: the server side ---------------------------------------------------


async def greet_without_auth(read_exactly: ReadExactly, write: Write) -> None:
    """Speak RFB as a server up to a passed SecurityResult, offering security type None
    (RFB 3.3, 3.7 and 3.8 clients). RfbError if the client does not speak RFB."""
    await write(VERSION_3_8)
    version = await read_exactly(12)
    try:
        minor = int(version[8:11]) if version[:8] == b"RFB 003." else -1
    except ValueError:
        minor = -1
    if minor < 3:
        raise RfbError(f"Not an RFB client: {version[:12]!r}")
    if minor < 7:  # 3.3: the server decides, no answer expected
        await write(struct.pack(">I", NONE))
        return
    await write(bytes([1, NONE]))
    chosen = (await read_exactly(1))[0]
    if chosen != NONE:
        raise RfbError(f"The client chose security type {chosen}, not None")
    if minor >= 8:
        await write(b"\0\0\0\0")  # SecurityResult: OK
