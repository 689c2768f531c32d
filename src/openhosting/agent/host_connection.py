"""The control plane's way to one host's agent, shared by the clients that call it (the
remote hypervisor driver, the remote drive storage): the host's name (the TLS server name
its certificate must carry), the agent's address, the control certificate's TLS context, the
deadlines, one HTTPS session, and the connections of drive byte streams
(storage/stream_wire.py), which are opened here, blocking, in the stream's own thread."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field

import aiohttp

from openhosting.agent.pki import is_dns_name
from openhosting.storage.stream_wire import STREAM_PREFACE, TlsStream, widen_socket_buffers

# Seconds an agent has to answer a call, beyond the call's own timeout.
CALL_TIMEOUT = 15.0
# Seconds to open a connection (TCP and TLS) to an agent.
CONNECT_TIMEOUT = 5.0
# Seconds for the TLS close of the session's connections: one stopped at once would drop its
# socket unclosed (aiohttp's "graceful shutdown" advice).
TLS_CLOSE_GRACE = 0.25


@dataclass
class HostConnection:
    """Host `host`'s agent, listening on `address` (HOST:PORT), called with `context`."""

    host: str
    address: str
    context: ssl.SSLContext
    call_timeout: float = CALL_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"https://{self.address}"

    def session(self) -> aiohttp.ClientSession:
        """The HTTPS session of the calls (made at the first; `close` ends it)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=self.connect_timeout)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(TLS_CLOSE_GRACE)

    def open_stream(self, stall_timeout: float) -> TlsStream:
        """A new connection for one drive byte stream, its TLS handshake done (the agent's
        certificate checked for this host's name); blocking: call it from the stream's
        thread. Then no `stall_timeout` seconds may pass without a byte moving."""
        raw = socket.create_connection(split_agent_address(self.address), self.connect_timeout)
        try:
            widen_socket_buffers(raw)
            raw.sendall(STREAM_PREFACE)  # in clear: the agent's listener takes it to a thread
            stream = TlsStream(raw, self.context, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        raw.settimeout(stall_timeout)
        return stream


def split_agent_address(address: str) -> tuple[str, int]:
    """The host (a DNS name, an IPv4 address or a bracketed IPv6 one, brackets removed) and
    port of an agent's `HOST:PORT`; ValueError saying what is wrong (`host set` refuses such
    an address rather than record one no call could reach)."""
    host, _, port = address.rpartition(":")
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("no port from 1 to 65535 after the last ':'")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError(f"{host[:60]!r} is not an IPv6 address in brackets") from None
    if not is_dns_name(host.lower()):  # an IPv4 address is one too, by its form
        raise ValueError(f"{host[:60]!r} is neither a DNS name nor an IP address")
    return host, int(port)
