"""Talk to the tiny guest's shell over the VM's serial socket, and watch its serial log.

The QEMU driver gives every VM a serial port that is a unix socket (one client at a time)
and also logs all guest output to a file. Tests read boot, lease and power-off markers from
the log and type shell commands through the socket.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

_counter = itertools.count()


async def wait_for_log(log: Path, text: str, *, count: int = 1, timeout: float = 60.0) -> str:
    """Wait until `text` occurs `count` times in the serial log; return the log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        content = log.read_text(errors="replace") if log.exists() else ""
        if content.count(text) >= count:
            return content
        if loop.time() >= deadline:
            raise TimeoutError(f"{text!r} x{count} not in {log} after {timeout:g} s:\n{content}")
        await asyncio.sleep(0.2)


class SerialConsole:
    """A connection to the guest's shell on ttyS0."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, socket_path: Path, timeout: float = 10.0) -> SerialConsole:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(socket_path)), timeout
        )
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

    async def send(self, command: str) -> None:
        """Type `command` without waiting for its end (e.g. one that powers the guest off)."""
        self._writer.write(f"{command}\n".encode())
        await self._writer.drain()

    async def run(self, command: str, timeout: float = 30.0) -> str:
        """Type `command` at the shell and return what it printed (without the echo)."""
        done = f"OH-DONE-{next(_counter)}"
        # The quotes split the marker in the echoed command line, so only the output matches.
        marker_command = f'echo "{done[:3]}""{done[3:]}"'
        self._writer.write(f"{command}; {marker_command}\n".encode())
        await self._writer.drain()
        output = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while done.encode() not in output:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {command!r} within {timeout:g} s: {output!r}")
            try:
                chunk = await asyncio.wait_for(self._reader.read(4096), remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"serial console closed while running {command!r}")
            output += chunk
        text = output.decode(errors="replace").replace("\r", "")
        before_marker = text[: text.rindex(done)]
        # Drop everything up to the end of the echoed command line.
        echoed = before_marker.find(marker_command)
        if echoed >= 0:
            before_marker = before_marker[echoed + len(marker_command) :]
        return before_marker.strip("\n")
