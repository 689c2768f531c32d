"""The QMP connection to one VM: lifecycle commands, block statistics, VNC password, events.

A thin, typed layer over `qemu.qmp.QMPClient`. Every command has a time limit, and every
failure (QEMU's error reply, a timeout, a closed connection) is a `HypervisorError`. The live
state of a VM is read from here, never from the database.

QEMU serves one QMP client at a time on the socket: the daemon keeps one `Monitor` per running
VM; a second connection would wait unanswered until the first closes (and time out).
Events are buffered from the moment of connecting, so none is lost between a command and the
wait for its event; `next_event`/`events()` end (None / stop) when QEMU closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
    Runstate,
)
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from openhosting.hypervisor.driver import BlockStats
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import slot_for_device_id

log = logging.getLogger(__name__)
# qemu.qmp logs every message it sends at DEBUG, VNC passwords included: never let it.
logging.getLogger("qemu.qmp").setLevel(logging.INFO)

DEFAULT_COMMAND_TIMEOUT = 10.0
GREETING_ATTEMPTS = 3
UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s: far beyond any disk, within QEMU's bound
_PERIPHERAL = "/machine/peripheral/"


def bandwidth_parameters(max_bandwidth: int) -> dict[str, object]:
    """`migrate-set-parameters`' arguments for a migration of at most `max_bandwidth`
    bytes/s; 0: none but QEMU's bound."""
    # Not QEMU's default limit (128 MiB/s): a saved state goes to a local file, paused, and
    # a live migration's limit is the operator's (`hypervisor.migration_max_bandwidth`).
    return {"max-bandwidth": max_bandwidth or UNLIMITED_BANDWIDTH}


def mirror_arguments(job: str, source: str, target: str, speed: int = 0) -> dict[str, object]:
    """`blockdev-mirror`'s arguments: all of `source` onto `target`, guest writes to both
    once ready (`write-blocking`), at most `speed` bytes/s in the background copy (0: none)."""
    arguments: dict[str, object] = {
        "job-id": job,
        "device": source,
        "target": target,
        "sync": "full",
        "copy-mode": "write-blocking",
    }
    if speed:
        arguments["speed"] = speed
    return arguments


@dataclass(frozen=True)
class MonitorEvent:
    """A QMP event, e.g. `SHUTDOWN` with data `{"guest": True, "reason": "guest-shutdown"}`."""

    name: str
    data: Mapping[str, object]
    timestamp: float  # seconds since the epoch, as QEMU stamped it

    @property
    def reason(self) -> str | None:
        """The `reason` of SHUTDOWN/RESET events (`guest-shutdown`, `host-qmp-quit`, ...)."""
        reason = self.data.get("reason")
        return reason if isinstance(reason, str) else None


class EventStream:
    """Events of one `Monitor.listen`, a copy of each apart from the VM's watcher's."""

    def __init__(self, listener: EventListener, closed: asyncio.Event) -> None:
        self._listener = listener
        self._closed = closed

    async def next(self, timeout: float) -> MonitorEvent | None:
        """The next event, or None if none came within `timeout` s; `HypervisorError` once
        QEMU closed the connection and every event was read."""
        if not self._listener.empty():
            return _event(await self._listener.get())
        if self._closed.is_set():
            raise HypervisorError("QMP connection closed")
        getter = asyncio.ensure_future(self._listener.get())
        closed = asyncio.ensure_future(self._closed.wait())
        await asyncio.wait({getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (getter, closed):
            waiter.cancel()
        # Checked after cancelling: an event that arrived meanwhile is not dropped.
        if getter.done() and not getter.cancelled():
            return _event(getter.result())
        if closed.done() and not closed.cancelled():
            raise HypervisorError("QMP connection closed")
        return None


class Monitor:
    """A QMP client for the VM whose socket is `socket_path`."""

    def __init__(
        self, socket_path: Path, *, command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        self._path = socket_path
        self._timeout = command_timeout
        self._qmp = QMPClient(socket_path.parent.name)
        self._closed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect, waiting up to `timeout` s for the socket to appear and QEMU to greet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # QEMU creates the socket before it daemonizes, but a caller may race a spawn.
        while not self._path.exists():
            if loop.time() >= deadline:
                raise HypervisorError(f"no QMP socket at {self._path} after {timeout:g} s")
            await asyncio.sleep(0.05)
        for attempt in range(1, GREETING_ATTEMPTS + 1):
            try:
                await asyncio.wait_for(
                    self._qmp.connect(str(self._path)), max(0.1, deadline - loop.time())
                )
                break
            except TimeoutError:
                raise HypervisorError(
                    f"QMP at {self._path} did not answer within {timeout:g} s "
                    "(is another client connected?)"
                ) from None
            except ConnectError as err:
                # QEMU can send an event where the session's opening expects its greeting
                # or the answer to qmp_capabilities (seen in CI: a start after the VM began,
                # an adoption after the previous client hung up; other QMP clients met it
                # too). qemu.qmp gives up on the session; a new one opens cleanly.
                opening = (GreetingError, NegotiationError)
                if not isinstance(err.exc, opening) or attempt == GREETING_ATTEMPTS:
                    raise HypervisorError(f"cannot connect to QMP at {self._path}: {err}") from err
                log.warning(
                    "qmp %s: the session opened badly (%s); connecting again", self._path, err
                )
                self._qmp = QMPClient(self._path.parent.name)
            except QMPError as err:
                raise HypervisorError(f"cannot connect to QMP at {self._path}: {err}") from err
        self._watcher = asyncio.create_task(self._watch_connection())

    async def close(self) -> None:
        """Close the connection; harmless if QEMU already closed it or it never opened."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        try:
            await self._qmp.disconnect()
        except (EOFError, OSError, QMPError) as err:
            # QEMU hanging up (it quit or was killed) is how a VM's connection normally ends.
            log.debug("qmp connection %s ended: %r", self._path, err)
        self._closed.set()

    async def __aenter__(self) -> Monitor:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether commands can be sent: connected and QEMU has not hung up."""
        return self._qmp.runstate == Runstate.RUNNING

    async def execute(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> object:
        """Run a QMP command and return its `return` value."""
        limit = self._timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._qmp.execute(command, arguments), limit)
        except TimeoutError:
            raise HypervisorError(f"QMP {command} got no answer within {limit:g} s") from None
        except ExecuteError as err:
            raise HypervisorError(f"QMP {command} failed: {err}") from err
        except QMPError as err:
            raise HypervisorError(f"QMP {command} failed: {err}") from err

    async def query_status(self) -> str:
        """QEMU's run state: `running`, `paused`, `shutdown`, `internal-error`, ..."""
        result = await self.execute("query-status")
        assert isinstance(result, dict)
        return str(result["status"])

    async def cont(self) -> None:
        """Resume a paused VM; requests held by a host I/O error are retried."""
        await self.execute("cont")

    async def query_writable_files(self) -> list[Path]:
        """The host files the VM's block nodes write to (`query-named-block-nodes`)."""
        result = await self.execute("query-named-block-nodes", {"flat": True})
        if not isinstance(result, list):
            raise HypervisorError(f"QMP query-named-block-nodes answered {result!r}")
        return sorted(
            {
                Path(str(node["file"]))
                for node in result
                if node.get("drv") == "file" and not node.get("ro")
            }
        )

    async def query_node_drivers(self) -> dict[str, str]:
        """The block driver of each named node (`query-named-block-nodes`): `file`,
        `raw`, `luks`, `nbd`..."""
        result = await self.execute("query-named-block-nodes", {"flat": True})
        if not isinstance(result, list):
            raise HypervisorError(f"QMP query-named-block-nodes answered {result!r}")
        return {str(node["node-name"]): str(node["drv"]) for node in result}

    async def add_luks_node(self, node: str, file: str, secret: str) -> None:
        """A `luks` block node `node` over node `file`, its key from secret object `secret`
        (opened now: the LUKS header must already be in `file`)."""
        await self.execute(
            "blockdev-add",
            {"driver": "luks", "node-name": node, "file": file, "key-secret": secret},
        )

    async def system_powerdown(self) -> None:
        """Press the ACPI power button; the guest decides whether and when to power off."""
        await self.execute("system_powerdown")

    async def system_reset(self) -> None:
        """Reset the machine, as the reset button does."""
        await self.execute("system_reset")

    async def quit(self) -> None:
        """Make QEMU exit at once (power cut). Returns when QEMU has acknowledged it."""
        try:
            await self.execute("quit")
        except HypervisorError as err:
            # QEMU may close the socket before its reply arrives: that is the quit done.
            if not isinstance(err.__cause__, ExecInterruptedError):
                raise

    async def stop_vcpus(self) -> None:
        """Pause the guest (QMP `stop`): its memory and devices no longer change."""
        await self.execute("stop")

    async def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU the file descriptor `fd` under `name` (QMP `getfd`, over SCM_RIGHTS)."""
        try:
            self._qmp.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            raise HypervisorError(f"cannot pass a descriptor to QMP: {err}") from err
        await self.execute("getfd", {"fdname": name})

    async def migrate(self, uri: str, max_bandwidth: int = 0) -> None:
        """Start sending the VM's state to `uri` (e.g. `fd:NAME`) at most `max_bandwidth`
        bytes/s, or as fast as it can be read (0); see `wait_migration`."""
        await self.execute("migrate-set-parameters", bandwidth_parameters(max_bandwidth))
        await self.execute("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        """Start reading the VM's state from `uri`, for a QEMU started with -incoming defer."""
        await self.execute("migrate-incoming", {"uri": uri})

    async def wait_migration(self, timeout: float) -> None:
        """Wait until the migration under way has completed; `HypervisorError` if it failed
        or is not done within `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = await self.execute("query-migrate")
            assert isinstance(result, dict)
            status = result.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise HypervisorError(
                    f"migration {status}: {result.get('error-desc', 'no reason given')}"
                )
            if loop.time() >= deadline:
                raise HypervisorError(f"migration not done within {timeout:g} s ({status})")
            await asyncio.sleep(0.05)

    # -- live migration (the steps of migration.py) ------------------------------------

    async def add_tls_creds(self, object_id: str, directory: Path, endpoint: str) -> None:
        """Load the X.509 files of `directory` (QEMU's names: ca-cert.pem, server-cert.pem,
        ...) as TLS credentials for `endpoint` (`server` or `client`), checking the peer's."""
        await self.execute(
            "object-add",
            {
                "qom-type": "tls-creds-x509",
                "id": object_id,
                "dir": str(directory),
                "endpoint": endpoint,
                "verify-peer": True,
            },
        )

    async def delete_object(self, object_id: str) -> None:
        await self.execute("object-del", {"id": object_id})

    async def set_migration_parameters(self, parameters: Mapping[str, object]) -> None:
        await self.execute("migrate-set-parameters", parameters)

    async def set_migration_capability(self, capability: str, state: bool = True) -> None:
        await self.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": capability, "state": state}]},
        )

    async def cancel_migration(self) -> None:
        await self.execute("migrate_cancel")

    async def start_nbd_server(self, address: str, tls_creds: str | None = None) -> None:
        """Serve NBD on `address` (`unix:PATH` or `tcp:HOST:PORT`; TLS only with
        `tls_creds`)."""
        kind, data = _socket_address(address)
        arguments: dict[str, object] = {"addr": {"type": kind, "data": data}}
        if tls_creds is not None:
            arguments["tls-creds"] = tls_creds
        await self.execute("nbd-server-start", arguments)

    async def export_writable(self, node: str) -> None:
        """Export block node `node` writable over the NBD server, named after it."""
        await self.execute(
            "block-export-add",
            {"type": "nbd", "id": node, "node-name": node, "name": node, "writable": True},
        )

    async def stop_nbd_server(self) -> None:
        """Stop serving NBD: its clients are cut, its exports let go of their nodes."""
        await self.execute("nbd-server-stop")

    async def add_nbd_node(
        self,
        node: str,
        address: str,
        export: str,
        tls: Mapping[str, str] | None = None,
        zeroes_as_holes: bool = False,
    ) -> None:
        """A block node `node` reading and writing `export` of the NBD server at `address`
        (`unix:PATH` or `tcp:HOST:PORT`; `tls`: its `tls-creds` and `tls-hostname`). With
        `zeroes_as_holes`, a write of zeros goes as a zero request that may punch a hole
        (`detect-zeroes: unmap`): a few bytes on the wire instead of the zeros."""
        kind, data = _socket_address(address)
        zeroes: dict[str, object] = (
            {"detect-zeroes": "unmap", "discard": "unmap"} if zeroes_as_holes else {}
        )
        await self.execute(
            "blockdev-add",
            {
                "driver": "nbd",
                "node-name": node,
                "server": {"type": kind, **data},
                "export": export,
                **(tls or {}),
                **zeroes,
            },
        )

    async def delete_node(self, node: str) -> None:
        await self.execute("blockdev-del", {"node-name": node})

    async def mirror(self, job: str, source: str, target: str, speed: int = 0) -> None:
        """Start job `job` copying all of node `source` to node `target` (at most `speed`
        bytes/s; 0: no limit), then each write to both before it completes
        (`write-blocking`), until cancelled."""
        await self.execute("blockdev-mirror", mirror_arguments(job, source, target, speed))

    async def cancel_block_job(self, job: str, force: bool = False) -> None:
        """End `job`; a READY mirror without `force` copies what is left first."""
        await self.execute("block-job-cancel", {"device": job, "force": force})

    async def query_block_jobs(self) -> dict[str, bool]:
        """The block jobs under way, by id: whether each is READY."""
        result = await self.execute("query-block-jobs")
        if not isinstance(result, list):
            raise HypervisorError(f"QMP query-block-jobs answered {result!r}")
        return {str(job["device"]): bool(job.get("ready")) for job in result}

    async def query_migration(self) -> dict[str, object]:
        """`query-migrate`'s answer: the migration's `status`, its `ram` counters..."""
        result = await self.execute("query-migrate")
        if not isinstance(result, dict):
            raise HypervisorError(f"QMP query-migrate answered {result!r}")
        return result

    async def query_migration_parameters(self) -> dict[str, object]:
        """`query-migrate-parameters`' answer: `max-bandwidth`, `downtime-limit`..."""
        result = await self.execute("query-migrate-parameters")
        if not isinstance(result, dict):
            raise HypervisorError(f"QMP query-migrate-parameters answered {result!r}")
        return result

    async def migrate_continue(self, state: str) -> None:
        """Let a migration paused in `state` (`pre-switchover`) go on."""
        await self.execute("migrate-continue", {"state": state})

    async def query_vcpu_threads(self) -> list[int]:
        """The host thread id of each vCPU, in vCPU order (`query-cpus-fast`)."""
        result = await self.execute("query-cpus-fast")
        if not isinstance(result, list):
            raise HypervisorError(f"QMP query-cpus-fast answered {result!r}")
        return [int(cpu["thread-id"]) for cpu in result]

    async def set_vnc_password(self, password: str) -> None:
        """Set the VNC password (8 characters at most); VNC refuses logins until one is set."""
        await self.execute("set_password", {"protocol": "vnc", "password": password})

    async def expire_vnc_password(self) -> None:
        """Make the current VNC password invalid now: VNC then refuses every login."""
        await self.execute("expire_password", {"protocol": "vnc", "time": "now"})

    async def query_blockstats(self) -> dict[str, BlockStats]:
        """I/O counters per API slot (`ide:0:0`, ...) of the drives attached to devices."""
        result = await self.execute("query-blockstats")
        assert isinstance(result, list)
        stats: dict[str, BlockStats] = {}
        for entry in result:
            slot = _slot_of_blockstats(entry)
            if slot is None:
                continue
            counters = entry["stats"]
            stats[slot] = BlockStats(
                read_bytes=counters["rd_bytes"],
                read_requests=counters["rd_operations"],
                write_bytes=counters["wr_bytes"],
                write_requests=counters["wr_operations"],
            )
        return stats

    async def next_event(self, timeout: float | None = None) -> MonitorEvent | None:
        """The next event; None once QEMU closed the connection and all events were read.

        Raises `HypervisorError` if nothing happens within `timeout` seconds.
        """
        try:
            return await self._next_event(timeout)
        except TimeoutError:
            raise HypervisorError(f"no QMP event within {timeout:g} s") from None

    async def events(self) -> AsyncIterator[MonitorEvent]:
        """Every event, in order, until QEMU closes the connection."""
        while (event := await self._next_event(None)) is not None:
            yield event

    async def wait_for_event(self, name: str, timeout: float) -> MonitorEvent:
        """Skip events until one called `name`; `HypervisorError` on timeout or hang-up."""
        try:
            async with asyncio.timeout(timeout):
                while (event := await self._next_event(None)) is not None:
                    if event.name == name:
                        return event
        except TimeoutError:
            raise HypervisorError(f"no QMP {name} event within {timeout:g} s") from None
        raise HypervisorError(f"QMP connection closed before a {name} event")

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[EventStream]:
        """The events called `names` from now on, while the block runs. A copy of each:
        the VM's watcher (vm.py) still gets its own, so a step waits for QEMU's word
        rather than asking again and again."""
        listener = EventListener(names)
        self._qmp.register_listener(listener)
        try:
            yield EventStream(listener, self._closed)
        finally:
            self._qmp.remove_listener(listener)

    async def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        listener = self._qmp.events
        while True:
            if not listener.empty():
                return _event(await listener.get())
            if self._closed.is_set():
                return None
            getter = asyncio.ensure_future(listener.get())
            closed = asyncio.ensure_future(self._closed.wait())
            await asyncio.wait(
                {getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in (getter, closed):
                waiter.cancel()
            # Checked after cancelling: an event that arrived meanwhile is not dropped.
            if getter.done() and not getter.cancelled():
                return _event(getter.result())
            if not closed.done() or closed.cancelled():
                raise TimeoutError

    async def _watch_connection(self) -> None:
        # qemu.qmp moves out of RUNNING when QEMU hangs up; turn that into our closed flag.
        while self._qmp.runstate == Runstate.RUNNING:
            await self._qmp.runstate_changed()
        self._closed.set()


def _event(message: Message) -> MonitorEvent:
    stamp = message.get("timestamp")
    data = message.get("data")
    seconds = 0.0
    if isinstance(stamp, Mapping):
        seconds = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
    return MonitorEvent(
        name=str(message["event"]),
        data=dict(data) if isinstance(data, Mapping) else {},
        timestamp=seconds,
    )


def _slot_of_blockstats(entry: Mapping[str, object]) -> str | None:
    # `qdev` is the device id, or for virtio devices the QOM path of their backend
    # (/machine/peripheral/block-0/virtio-backend); the node name is the fallback.
    qdev = str(entry.get("qdev") or "")
    device_id = qdev.removeprefix(_PERIPHERAL).split("/")[0]
    slot = slot_for_device_id(device_id) if device_id else None
    if slot is None:
        node = str(entry.get("node-name") or "")
        slot = slot_for_device_id(node.removeprefix("drive-")) if node else None
    return slot


def _socket_address(address: str) -> tuple[str, dict[str, str]]:
    """QMP's SocketAddress (its type, its fields) of `unix:PATH` or `tcp:HOST:PORT`."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return "unix", {"path": rest}
    host, _, port = rest.rpartition(":")
    if kind == "tcp" and host and port.isdigit():
        return "inet", {"host": host, "port": port}
    raise HypervisorError(f"not a unix: or tcp: address: {address!r}")
