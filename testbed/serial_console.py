"""Talk to the tiny guest's shell over the VM's console socket, and watch its serial log.

The QEMU driver's serial relay logs all guest output to `serial.log` (rotated to
`serial.log.1`, … with a bound) and lends the console on `console.sock` (one client at a
time). Tests read boot, lease and power-off markers from the log and type shell commands
through the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_counter = itertools.count()
# A kernel message on the console: `[   12.345678] …`.
_KERNEL_MESSAGE = re.compile(r"\[\s*\d+\.\d+\] ")


def _echo_split(marker: str) -> str:
    """A command printing `marker` whose own text does not contain it."""
    return f'echo "{marker[:3]}""{marker[3:]}"'


def read_serial_log(log: Path) -> str:
    """All that the serial log at `log` keeps, its rotated files included, oldest first."""
    rotated = [path for path in log.parent.glob(f"{log.name}.*") if path.suffix[1:].isdigit()]
    files = [*sorted(rotated, key=lambda path: -int(path.suffix[1:])), log]
    return "".join(path.read_text(errors="replace") for path in files if path.exists())


async def _poll_log(
    log: Path, found_in: Callable[[str], T | None], wanted: str, timeout: float
) -> T:
    """What `found_in` finds in the serial log's content, looked at every 0.2 s until it finds
    something (not None) or `timeout` seconds have passed (TimeoutError naming `wanted`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        content = read_serial_log(log)
        if (found := found_in(content)) is not None:
            return found
        if loop.time() >= deadline:
            raise TimeoutError(f"{wanted} not in {log} after {timeout:g} s:\n{content}")
        await asyncio.sleep(0.2)


async def wait_for_log(log: Path, text: str, *, count: int = 1, timeout: float = 60.0) -> str:
    """Wait until `text` occurs `count` times in the serial log; return the log."""

    def enough(content: str) -> str | None:
        return content if content.count(text) >= count else None

    return await _poll_log(log, enough, f"{text!r} x{count}", timeout)


def whole_lines(text: str) -> str:
    """`text` up to its last newline: a line the guest is still printing is left out."""
    return text[: text.rfind("\n") + 1]


async def wait_for_matches(
    log: Path, pattern: str | re.Pattern[str], *, count: int = 1, timeout: float = 60.0
) -> list[re.Match[str]]:
    """Wait until `pattern` matches `count` times in the serial log's whole lines; return every
    match. A marker alone is not enough to read what follows it on its line: the serial relay
    may have logged only part of that line yet (an address cut to `192.0.2.`)."""

    def enough(content: str) -> list[re.Match[str]] | None:
        found = list(re.finditer(pattern, whole_lines(content)))
        return found if len(found) >= count else None

    return await _poll_log(log, enough, f"{pattern!r} x{count}", timeout)


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
        """Type `command` at the shell and return what it printed.

        The output is what comes between two marker lines the shell prints around it: the
        echo of the typed line never matches them (quotes split them there), and kernel
        messages, which may land on the console at any moment, are dropped."""
        number = next(_counter)
        start, done = f"OH-START-{number}", f"OH-DONE-{number}"
        typed = f"{_echo_split(start)}; {command}; {_echo_split(done)}"
        self._writer.write(f"{typed}\n".encode())
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
        between = text[text.index(start) + len(start) : text.rindex(done)]
        lines = [line for line in between.split("\n") if not _KERNEL_MESSAGE.match(line)]
        return "\n".join(lines).strip("\n")
