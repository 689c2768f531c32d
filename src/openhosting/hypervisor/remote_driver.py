"""The hypervisor driver of another host: each call made to that host's agent over mutual
TLS (agent/server.py serves it; hypervisor/calls.py is the wire format). It moves VMs too
(`MigratingDriver`): the streams of a live migration go between the two hosts' QEMUs, over
TCP and TLS with the cluster's certificates, not through this side.

The control plane presents its `control` certificate; the agent's certificate must be the
cluster CA's and carry the host's name as its DNS name (the TLS server name of every call):
the agent of host B cannot answer for host A, and nothing, not even a drive's passphrase in a
start, is sent before the handshake has proved it (agent/pki.py).

Every call has a deadline (`CALL_TIMEOUT`, plus the call's own timeout for those that wait
on QEMU); an agent that does not answer, or cannot be reached, is a `HypervisorError` naming
the host. The driver's events come on the agent's `/events` WebSocket, each acknowledged once
this side's handler has run (the agent's driver waits for that, as `stop` waits for EXITED).

The interface's synchronous methods cannot wait for the network, so they answer from what
this driver keeps: the host's settings and run directory (read at `connect`), the VMs' status
(from the answers of start and adopt and from the events, refreshed after each call that
changes a VM), how VMs ended (from EXITED and adopt). `forget` is sent in the background.
Two must ask the host itself, `vnc_port_free` and `serial_log`: they wait for the agent's
answer, so they are called from a worker thread (the services do), never on the event loop
(a `HypervisorError` says so rather than stalling the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from openhosting.agent.host_connection import CALL_TIMEOUT, CONNECT_TIMEOUT, HostConnection
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor import driver
from openhosting.hypervisor.calls import (
    CALLS,
    EXPORT_CALLS,
    HOST_CALLS,
    REPLACED,
    Call,
    CallError,
    decode,
    encode,
)
from openhosting.hypervisor.errors import HostUnreachableError, HypervisorError
from openhosting.hypervisor.network_calls import NETWORK_CALLS
from openhosting.hypervisor.spec import HostVmSettings, NbdSource
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.hypervisor.remote")

# Seconds between attempts to follow the events again once the stream broke.
RECONNECT_DELAY = 1.0
CHUNK = 1 << 16


class RemoteHypervisorDriver:
    """The VMs of host `host`, whose agent listens on `address` (HOST:PORT); implements
    `HypervisorDriver` once `connect` has returned."""

    def __init__(
        self,
        host: str,
        address: str,
        context: ssl.SSLContext,
        *,
        call_timeout: float = CALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        agent = HostConnection(host, address, context, call_timeout, connect_timeout)
        self._agent = agent
        self.host, self._base, self._context = agent.host, agent.base_url, agent.context
        self._call_timeout, self._connect_timeout = agent.call_timeout, agent.connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._settings: HostVmSettings | None = None
        self._run_path = Path("/nonexistent")
        self._status: dict[str, driver.VmStatus] = {}
        self._ended: dict[str, driver.VmEnd] = {}
        self._handler: driver.EventHandler | None = None
        self._follower: asyncio.Task[None] | None = None
        self._following = True
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> None:
        """Read the host's settings and follow its events; `HypervisorError` if its agent
        cannot be reached or is not host `host`'s."""
        self._loop = asyncio.get_running_loop()
        async with Reverter() as revert:
            self._session = self._agent.session()
            revert.add(self.close)
            self._settings = await self._call("host_settings", vnc_listen="", netns=None)
            self._run_path = await self._call("run_dir", server="")
            following = asyncio.get_running_loop().create_future()
            self._follower = asyncio.create_task(self._follow(following))
            try:
                async with asyncio.timeout(self._call_timeout):
                    await following
            except TimeoutError:
                raise self._unreachable("no event stream") from None
            revert.success()

    async def close(self) -> None:
        """Stop following events and close the connections (the agent's VMs are untouched)."""
        await self._stop_following()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._agent.close()

    def listen(self, handler: driver.EventHandler) -> None:
        self._handler = handler

    # -- the host --------------------------------------------------------------------

    def host_settings(self, *, vnc_listen: str, netns: str | None) -> HostVmSettings:
        if self._settings is None:
            raise HypervisorError(f"host {self.host}: not connected")
        return dataclasses.replace(self._settings, vnc_listen=vnc_listen, netns=netns)

    def run_dir(self, server: str) -> Path:
        return self._run_path / server

    async def capacity(self) -> HostCapacity:
        """What the host offers, as its agent measures it now (not a driver method: the
        agent's own call, for the host's row)."""
        capacity: HostCapacity = await self._call("capacity")
        return capacity

    def vnc_port_free(self, address: str, port: int) -> bool:
        free: bool = self._call_from_thread("vnc_port_free", address=address, port=port)
        return free

    # -- life ------------------------------------------------------------------------

    async def start(
        self, request: driver.StartRequest, restore: driver.StateStream | None = None
    ) -> driver.VmStatus:
        if restore is None:
            status: driver.VmStatus = await self._call_record(
                "start", request, extra=request.timeout
            )
        else:
            status = await self._call_record("start", request, extra=request.timeout, state=restore)
        self._status[status.server] = status
        self._ended.pop(status.server, None)
        return status

    async def adopt(
        self, server: str, *, started: float, timeout: float = 10.0
    ) -> driver.VmStatus | None:
        status: driver.VmStatus | None = await self._call(
            "adopt", server=server, started=started, timeout=timeout
        )
        if status is None:
            self._ended[server] = await self._call("how_ended", server=server)
        else:
            self._status[server] = status
        return status

    def how_ended(self, server: str) -> driver.VmEnd:
        return self._ended.get(server, driver.VmEnd.SHUTDOWN)

    async def unheld(self) -> list[str]:
        servers: list[str] = await self._call("unheld")
        return servers

    async def held_on_host(self) -> list[str]:
        """The servers whose VM the agent holds, whichever API node asked for it (`held`
        is what this node holds): the agent's own `held`, which agents of every version
        answer."""
        servers: list[str] = await self._call("held")
        return servers

    async def stop_unheld(self, server: str, timeout: float = 10.0) -> None:
        await self._call("stop_unheld", server=server, timeout=timeout)

    async def stop(self, server: str, timeout: float = 10.0) -> None:
        await self._changing(server, "stop", timeout=timeout)

    async def kill(self, server: str, timeout: float = 10.0) -> None:
        await self._changing(server, "kill", timeout=timeout)

    async def powerdown(self, server: str) -> None:
        await self._call("powerdown", server=server)

    async def reset(self, server: str) -> None:
        await self._call("reset", server=server)

    async def resume(self, server: str) -> None:
        await self._changing(server, "resume")

    async def save_state(self, server: str, sink: driver.StateStream, timeout: float) -> None:
        record = CALLS["save_state"].request(server=server, timeout=timeout)
        try:
            await self._call_record("save_state", record, extra=timeout, sink=sink)
        except HypervisorError:
            # The agent may have sent the whole state that our side failed to store: the VM
            # must run on all the same.
            with contextlib.suppress(HypervisorError):
                await self._call("resume", server=server)
            raise
        finally:
            await self._refresh(server)

    async def detach_all(self) -> None:
        await self._call("detach_all")
        self._status.clear()
        await self._stop_following()  # holding nothing, it has no events to hear

    def forget(self, server: str) -> None:
        task = asyncio.create_task(self._forget(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- while it runs ---------------------------------------------------------------

    def status(self, server: str) -> driver.VmStatus | None:
        return self._status.get(server)

    def held(self) -> list[str]:
        return list(self._status)

    async def set_cpu(self, server: str, cpu_mhz: int) -> None:
        await self._call("set_cpu", server=server, cpu_mhz=cpu_mhz)

    async def set_vnc_password(self, server: str, password: str | None) -> None:
        await self._call("set_vnc_password", server=server, password=password)

    async def blockstats(self, server: str) -> Mapping[str, driver.BlockStats]:
        stats: Mapping[str, driver.BlockStats] = await self._call("blockstats", server=server)
        return stats

    def serial_log(self, server: str) -> bytes | None:
        log_bytes: bytes | None = self._call_from_thread("serial_log", server=server)
        return log_bytes

    async def network_call(self, method: str, record: object) -> Any:
        """One call of the host's network driver (`NETWORK_CALLS`: hypervisor/network_calls.py),
        over this driver's connection; its answer decoded."""
        return await self._call_record(
            method, record, path="network", answer_type=NETWORK_CALLS[method].answer
        )

    # -- drives served to other hosts (`ExportingDriver`; hypervisor/nbd_exports.py) ---

    async def export_drive(self, request: driver.ExportRequest) -> NbdSource:
        source: NbdSource = await self._call_record("export_drive", request)
        return source

    async def end_exports(self, server: str) -> None:
        await self._call("end_exports", server=server)

    async def exports(self) -> list[str]:
        servers: list[str] = await self._call("exports")
        return servers

    # -- live migration (`MigratingDriver`; hypervisor/migration.py) -----------------

    async def prepare_incoming(self, request: driver.IncomingRequest) -> driver.IncomingInfo:
        info: driver.IncomingInfo = await self._call_record(
            "prepare_incoming", request, extra=request.start.timeout
        )
        return checked_incoming(self.host, request.start.spec.uuid, info)

    async def migrate_out(self, server: str, target: driver.IncomingInfo, timeout: float) -> None:
        await self._call("migrate_out", server=server, target=target, timeout=timeout)

    async def finish_incoming(self, server: str, timeout: float) -> driver.VmStatus:
        status: driver.VmStatus = await self._call(
            "finish_incoming", server=server, timeout=timeout
        )
        self._status[server] = status  # held here from now on
        self._ended.pop(server, None)
        return status

    async def abort_incoming(self, server: str) -> None:
        await self._call("abort_incoming", server=server)
        self._status.pop(server, None)

    async def cancel_migrate_out(self, server: str) -> None:
        await self._changing(server, "cancel_migrate_out")

    async def end_migrated(self, server: str, timeout: float = 10.0) -> None:
        try:
            await self._call("end_migrated", server=server, timeout=timeout)
        finally:
            self._status.pop(server, None)  # it runs elsewhere: not held here, not ended

    # -- inside ----------------------------------------------------------------------

    async def _stop_following(self) -> None:
        """End the event stream with a WebSocket close (a cancelled stream would leave its
        connection to the collector)."""
        follower, self._follower = self._follower, None
        if follower is None:
            return
        self._following = False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self._socket is not None:
                    await self._socket.close()
                await follower
        except (TimeoutError, aiohttp.ClientError, OSError):
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _changing(self, server: str, method: str, **fields: Any) -> None:
        try:
            await self._call(method, server=server, **fields)
        finally:
            await self._refresh(server)

    async def _refresh(self, server: str) -> None:
        """Read the status of `server` again after a call that may have changed it."""
        with contextlib.suppress(HypervisorError):
            status: driver.VmStatus | None = await self._call("status", server=server)
            if status is None:
                self._status.pop(server, None)
            else:
                self._status[server] = status

    async def _forget(self, server: str) -> None:
        try:
            await self._call("forget", server=server)
        except HypervisorError as error:
            log.warning(
                "event=remote_forget_failed host=%s server=%s error=%s", self.host, server, error
            )

    def _call_from_thread(self, method: str, **fields: Any) -> Any:
        """A call made from a worker thread (an interface method that must answer at once),
        on this driver's event loop; its answer once there."""
        loop = self._loop
        if loop is None:
            raise HypervisorError(f"host {self.host}: not connected")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise HypervisorError(
                f"host {self.host}: {method} waits for the agent: call it from a worker thread"
            )
        future = asyncio.run_coroutine_threadsafe(self._call(method, **fields), loop)
        try:
            # _call has its own deadline; this one only guards against a loop gone.
            return future.result(self._call_timeout + CONNECT_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise self._unreachable(f"{method} got no answer in time") from None

    async def _call(self, method: str, **fields: Any) -> Any:
        record = _call_of(method).request(**fields)
        return await self._call_record(method, record, extra=float(fields.get("timeout", 0.0)))

    async def _call_record(
        self,
        method: str,
        record: object,
        *,
        extra: float = 0.0,
        state: driver.StateStream | None = None,
        sink: driver.StateStream | None = None,
        path: str = "calls",
        answer_type: Any = None,
    ) -> Any:
        if self._session is None:
            raise HypervisorError(f"host {self.host}: not connected")
        line = json.dumps(encode(record)).encode() + b"\n"
        url = f"{self._base}/{path}/{method}" + ("?restore=1" if state is not None else "")
        body: Any = line if state is None else _stream_after(line, state)
        try:
            async with asyncio.timeout(self._call_timeout + extra):
                async with self._session.post(
                    url, data=body, ssl=self._context, server_hostname=self.host
                ) as response:
                    if response.status != 200:
                        raise HypervisorError(await _error_of(self.host, method, response))
                    if sink is not None:
                        await _drain_into(response, sink)
                        return None
                    answer = _field(await response.json(), "answer")
        except HypervisorError:
            raise
        except TimeoutError:
            raise self._unreachable(f"{method} got no answer in time") from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as error:
            raise self._unreachable(f"{method}: {error}") from None
        except (ValueError, CallError) as error:  # not JSON, or no answer in it
            raise HypervisorError(f"host {self.host}: a bad answer to {method}: {error}") from None
        try:
            return decode(_call_of(method).answer if path == "calls" else answer_type, answer)
        except CallError as error:
            raise HypervisorError(f"host {self.host}: a bad answer to {method}: {error}") from None

    def _unreachable(self, what: str) -> HypervisorError:
        return HostUnreachableError(f"host agent {self.host} at {self._base} unreachable: {what}")

    async def _follow(self, following: asyncio.Future[None]) -> None:
        """Follow the agent's events, again after a break, until closed."""
        assert self._session is not None
        while self._following:
            try:
                # No autoclose: aiohttp's own answer to the agent's close frame, failing on a
                # connection the agent has already dropped, overwrote the agent's close code
                # with 1006, and a replaced follower came back and replaced the other in turn
                # (two API nodes took an agent's events from each other every second).
                async with self._session.ws_connect(
                    f"{self._base}/events", ssl=self._context, server_hostname=self.host,
                    heartbeat=10.0, autoclose=False,
                ) as socket:  # fmt: skip
                    self._socket = socket
                    async for message in socket:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        data = _event_message(message.data)
                        if data.get("hello"):
                            if not following.done():
                                following.set_result(None)
                            continue
                        await self._receive(decode(driver.VmEvent, data["event"]))
                        await socket.send_json({"ack": data["seq"]})
                    replaced = socket.close_code == REPLACED  # the agent's, before our close
                self._socket = None
                if replaced:
                    log.warning("event=remote_events_replaced host=%s", self.host)
                    return  # another control plane follows this host now
            except (aiohttp.ClientError, OSError, ssl.SSLError, CallError) as error:
                self._socket = None
                log.warning("event=remote_events_lost host=%s error=%s", self.host, error)
            if self._following:
                await asyncio.sleep(RECONNECT_DELAY)

    async def _receive(self, event: driver.VmEvent) -> None:
        status = self._status.get(event.server)
        if event.kind == driver.VmEventKind.EXITED:
            self._status.pop(event.server, None)
            self._ended[event.server] = event.how or driver.VmEnd.SHUTDOWN
        elif status is not None and event.kind == driver.VmEventKind.PAUSED:
            self._status[event.server] = dataclasses.replace(
                status, state=driver.VmState.PAUSED, reason=event.reason
            )
        elif status is not None and event.kind == driver.VmEventKind.RESUMED:
            self._status[event.server] = dataclasses.replace(
                status, state=driver.VmState.RUNNING, reason=None
            )
        if self._handler is not None:
            try:
                await self._handler(event)
            except Exception:
                log.exception("event=remote_event_handler_failed host=%s", self.host)


def _field(body: Any, name: str) -> Any:
    """Field `name` of an agent's JSON answer; CallError when the answer has none."""
    if not isinstance(body, dict) or name not in body:
        raise CallError(f"no {name!r} in the answer")
    return body[name]


def _event_message(text: str) -> dict[str, Any]:
    """One message of the agent's event stream: its hello, or an event with its number.
    CallError for anything else: the stream is given up and followed again, where an error
    escaping the follower ended it for good (the host's events never heard again)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise CallError("an event message that is not JSON") from None
    if not isinstance(data, dict):
        raise CallError("an event message that is not an object")
    if not data.get("hello") and not ("event" in data and isinstance(data.get("seq"), int)):
        raise CallError("an event message with no event or number")
    return data


def _call_of(method: str) -> Call:
    return CALLS.get(method) or EXPORT_CALLS.get(method) or HOST_CALLS[method]


def checked_incoming(host: str, server: str, info: driver.IncomingInfo) -> driver.IncomingInfo:
    """`info` as host `host` answered a `prepare_incoming` of `server`, if it is for that
    server and, with TLS, names that host: a source checks the target's certificate against
    `tls_hostname`, which must be the host this side reached, not one the answer picked."""
    if info.server != server or info.tls_hostname not in (None, host):
        raise HypervisorError(
            f"host {host}: prepare_incoming answered for {info.server} as"
            f" {info.tls_hostname!r}, not for {server} as {host!r}"
        )
    return info


async def _error_of(host: str, method: str, response: aiohttp.ClientResponse) -> str:
    try:
        message = str((await response.json())["error"])
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        message = f"HTTP {response.status}"
    return f"host {host}: {method}: {message}"


async def _stream_after(line: bytes, source: driver.StateStream) -> Any:
    """The call's line, then what `source` writes into a pipe (a saved state)."""
    yield line
    read_end, write_end = os.pipe()
    feeding = asyncio.create_task(asyncio.to_thread(driver.run_state_stream, source, write_end))
    try:
        while chunk := await asyncio.to_thread(os.read, read_end, CHUNK):
            yield chunk
        await feeding
    finally:
        os.close(read_end)
        if not feeding.done():
            feeding.cancel()


async def _drain_into(response: aiohttp.ClientResponse, sink: driver.StateStream) -> None:
    """Give the body of `response` (a saved state) to `sink` through a pipe."""
    read_end, write_end = os.pipe()
    draining = asyncio.create_task(asyncio.to_thread(driver.run_state_stream, sink, read_end))
    stopped_reading = False
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[await asyncio.to_thread(os.write, write_end, view) :]
    except BrokenPipeError:
        stopped_reading = True  # the sink's own error says why
    finally:
        os.close(write_end)
    try:
        await draining
    except OSError as error:
        raise HypervisorError(f"cannot store the saved state: {error}") from error
    if stopped_reading:
        raise HypervisorError("the saved state was not read to its end")
