"""The daemon's end of a VM's serial port: it logs the guest's output with a bound and lends
the console to one client at a time.

QEMU's serial port is a unix socket server with a single client, and QEMU stores nothing
while no client is connected (a byte the UART cannot send is retried a few times, then
dropped). The daemon is that client, always: every byte the guest prints
goes to a `RotatingLog` (so the log has a hard bound whatever the guest does) and, when
someone holds the console, to them too. The console is offered on a socket of the daemon's
own (`console.sock` in the run directory), one client at a time; what the client types goes
to the guest. While no daemon runs (a restart), nobody receives the output: the log has a gap
but never grows, and the next daemon attaches again when it adopts the VM.

A console client that does not read its output is disconnected once `CONSOLE_BACKLOG` bytes
wait for it, rather than holding the guest (or the daemon's memory) back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.serial_log import RotatingLog, SerialLogLimit
from openhosting.hypervisor.spec import RunPaths
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.hypervisor")

CONSOLE_BACKLOG = 256 * 1024
_READ_SIZE = 16 * 1024


class SerialRelay:
    """One VM's serial port as the daemon holds it. Create with `attach`."""

    def __init__(
        self,
        paths: RunPaths,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        serial_log: RotatingLog,
    ) -> None:
        self._paths = paths
        self._qemu_reader = reader
        self._qemu_writer = writer
        self._log = serial_log
        self._console: asyncio.StreamWriter | None = None
        self._console_tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def attach(
        cls, paths: RunPaths, limit: SerialLogLimit, *, timeout: float = 10.0
    ) -> SerialRelay:
        """Connect to QEMU's serial socket, start logging and offer the console socket."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(paths.serial_socket)),
                    max(0.1, deadline - loop.time()),
                )
                break
            except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as error:
                if loop.time() >= deadline:
                    raise HypervisorError(
                        f"cannot connect to the serial socket {paths.serial_socket}: {error!r}"
                    ) from None
                await asyncio.sleep(0.05)
        relay = cls(paths, reader, writer, RotatingLog(paths.serial_log, limit))
        async with Reverter() as revert:
            revert.add(relay.close)
            paths.console_socket.unlink(missing_ok=True)
            relay._server = await asyncio.start_unix_server(
                relay._serve_console, path=str(paths.console_socket)
            )
            os.chmod(paths.console_socket, 0o600)  # a console is root on the guest
            revert.success()
        relay._pump = asyncio.create_task(relay._copy_output())
        return relay

    async def _copy_output(self) -> None:
        """Guest output to the log and the console holder, until QEMU hangs up."""
        log_failed = False
        try:
            while chunk := await self._qemu_reader.read(_READ_SIZE):
                try:
                    self._log.write(chunk)
                except OSError as error:
                    # E.g. the run directory's filesystem is full: the console still works.
                    if not log_failed:
                        log.warning(
                            "event=serial_log_failed path=%s error=%s",
                            self._paths.serial_log,
                            error,
                        )
                    log_failed = True
                self._forward(chunk)
        except ConnectionError as error:
            log.info("event=serial_hung_up path=%s error=%s", self._paths.directory, error)

    def _forward(self, chunk: bytes) -> None:
        console = self._console
        if console is None:
            return
        if console.transport.get_write_buffer_size() > CONSOLE_BACKLOG:
            log.info("event=console_dropped path=%s reason=not_reading", self._paths.directory)
            self._console = None
            console.close()
            return
        console.write(chunk)

    async def _serve_console(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._console_tasks.add(task)
        try:
            if self._console is not None:
                writer.write(b"console busy: another client holds it\r\n")
                return
            self._console = writer
            while data := await reader.read(_READ_SIZE):
                self._qemu_writer.write(data)
                await self._qemu_writer.drain()
        except (ConnectionError, OSError):
            pass  # the client or QEMU went away: the console is free again either way
        finally:
            if self._console is writer:
                self._console = None
            writer.close()
            self._console_tasks.discard(task)

    async def close(self) -> None:
        """Stop relaying; the log files stay. Once only: the console socket's path may be
        another relay's by a second call (the VM adopted again)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._console_tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._qemu_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._qemu_writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
        self._log.close()
        self._paths.console_socket.unlink(missing_ok=True)
