"""The host agent's HTTPS API: this host's hypervisor driver, served to the control plane.

Every request comes over mutual TLS (agent/pki.py): the TLS layer refuses a client without a
certificate of the cluster CA, and `_control_only` refuses one whose role is not `control`
(another host's agent) before anything is read or called. Then:

- `POST /calls/{method}`: one driver call (hypervisor/calls.py), those of a live migration
  (`MigratingDriver`) included; the body's first line is the request record as JSON, the
  answer `{"answer": ...}`. A restoring `start` streams the saved
  state after that line; `save_state` answers with the state as its body (cut short, with the
  connection, if the driver fails once it has begun). A `HypervisorError` is 409 with
  `{"error": message}`, a malformed call 400.
- `POST /calls/capacity`: the agent's own call (`HOST_CALLS`), what this host offers
  (`HostCapacity`: cores, MHz, memory, disk per tier), measured here at each call.
- `POST /network/{method}`: one call of this host's network driver (hypervisor/network_calls.py):
  the NICs of the servers whose VMs run here (taps on this host's bridges, its DHCP server,
  blocked ports, the VNC overlay). The driver is started at the first call that needs it, so
  an agent whose host runs no NIC changes nothing of its network. A `NetworkError` is 409.
- `GET /events`: a WebSocket carrying the driver's events, each `{"seq": n, "event": ...}`,
  which the control plane acknowledges (`{"ack": n}`) once its handler has run: the driver
  waits for that, so `stop` still returns once EXITED has been handled. One follower at a
  time (a control plane that reconnects replaces its old stream); with none, events are
  logged and dropped (a control plane that comes back adopts and reconciles).
- `POST /faults/{name}`: only over the fake driver (tests): crash, pause, fail (or delay)
  the next start, print on a VM's serial port, take a port (as another program would).
- `POST /storage/{action}`: the bytes of the drives this host holds (agent/storage_routes.py).
- `POST /calls/export_drive`, `end_exports`, `exports`: this host's drives served over NBD
  to the VMs of other hosts (agent/export_calls.py).
- `POST /cache/{action}`: this host's copies of standard drives (agent/cache_routes.py); a
  start's cdrom named by a standard drive's UUID and generation (`DiskSpec.cache`) opens
  the copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from openhosting.agent.cache_routes import CACHE_KEY, add_cache_routes
from openhosting.agent.export_calls import EXPORTS_KEY, export_call
from openhosting.agent.image_cache import ImageCache
from openhosting.agent.pki import CONTROL, peer_role
from openhosting.agent.storage_routes import STORAGE_KEY, add_storage_routes
from openhosting.errors import ApiError
from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.calls import (
    CALLS,
    EXPORT_CALLS,
    HOST_CALLS,
    MIGRATING,
    REPLACED,
    WHOLE_RECORD,
    CallError,
    arguments,
    decode,
    encode,
)
from openhosting.hypervisor.driver import HypervisorDriver, StartRequest, VmEvent
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.nbd_exports import DriveExports
from openhosting.hypervisor.network_calls import NETWORK_CALLS, NetworkFacts
from openhosting.network.driver import NetworkDriver, NicPlan
from openhosting.network.errors import NetworkError
from openhosting.storage.local_storage import LocalDriveStorage

log = logging.getLogger("openhosting.agent")

# How long a driver's event waits for the control plane's handler (a stop waits as long).
ACK_TIMEOUT = 30.0
CHUNK = 1 << 16
# The first line of a call's body: its request record.
MAX_CALL_LINE = 1 << 20
DRIVER_KEY = web.AppKey("driver", object)
RELAY_KEY = web.AppKey("relay", object)
CAPACITY_KEY = web.AppKey("capacity", object)
NETWORK_KEY = web.AppKey("network", object)
# The network calls that need the driver started first. The others read, undo, or change
# only what runs (the VXLAN peers, the DHCP server's watch): the control plane makes them
# every few seconds on every host, which must not set up a network where no NIC is.
NEEDS_START = frozenset({"attach", "reconcile", "open_vnc", "open_vnc_address"})


class EventRelay:
    """The driver's one event handler: passes each event to the control plane following
    `/events` and waits for its acknowledgement."""

    def __init__(self) -> None:
        self._socket: web.WebSocketResponse | None = None
        self._seq = 0
        self._acks: dict[int, asyncio.Future[None]] = {}

    async def handle(self, event: VmEvent) -> None:
        socket = self._socket
        if socket is None or socket.closed:
            log.warning("event=agent_event_dropped server=%s kind=%s", event.server, event.kind)
            return
        self._seq += 1
        seq = self._seq
        acked = asyncio.get_running_loop().create_future()
        self._acks[seq] = acked
        try:
            await socket.send_json({"seq": seq, "event": encode(event)})
            async with asyncio.timeout(ACK_TIMEOUT):
                await acked
        except (TimeoutError, ConnectionError) as error:
            log.warning(
                "event=agent_event_unacknowledged server=%s kind=%s error=%r",
                event.server, event.kind, error,
            )  # fmt: skip
        finally:
            self._acks.pop(seq, None)

    async def close(self) -> None:
        """The agent stops: end the follower's stream (the runner's clean-up would wait for
        it until the agent is killed, its VMs never let go of)."""
        if (socket := self._socket) is not None:
            await socket.close(code=WSCloseCode.GOING_AWAY, message=b"the agent stops")

    async def follow(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=10.0)
        await socket.prepare(request)
        previous, self._socket = self._socket, socket
        if previous is not None:
            await previous.close(code=REPLACED, message=b"another control plane follows")
        await socket.send_json({"hello": True})
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            seq = json.loads(message.data).get("ack")
            if (acked := self._acks.get(seq)) is not None and not acked.done():
                acked.set_result(None)
        if self._socket is socket:
            self._socket = None
        return socket


class AgentNetwork:
    """This host's network driver, started at the first call that needs it."""

    def __init__(self, driver: NetworkDriver) -> None:
        self.driver = driver
        self.started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if not self.started:
                await self.driver.start()
                self.started = True

    async def close(self, idle: bool) -> None:
        """The agent stops: as the daemon's network at its stop (`NetworkDriver.close`)."""
        if self.started:
            await self.driver.close(idle)


def make_app(
    driver: HypervisorDriver,
    capacity: Callable[[], HostCapacity] | None = None,
    storage: LocalDriveStorage | None = None,
    network: AgentNetwork | None = None,
    exports: DriveExports | None = None,
    cache: ImageCache | None = None,
) -> web.Application:
    """The agent's application over `driver` (its TLS is the server's: agent/main.py);
    `capacity` measures the host (none: the `capacity` call is refused); `storage` serves
    this host's drives (none: no storage routes); `network` is its network driver (none:
    the network calls are refused); `exports` serves `storage`'s drives to other hosts over
    NBD (none: the export calls are refused); `cache` holds its copies of standard drives
    (none: the cache calls are not served, a start naming a copy is refused)."""
    app = web.Application(middlewares=[_control_only], client_max_size=MAX_CALL_LINE)
    if storage is not None:
        add_storage_routes(app, storage)
    if exports is not None:
        app[EXPORTS_KEY] = exports
    if cache is not None:
        add_cache_routes(app, cache)
    relay = EventRelay()
    driver.listen(relay.handle)
    app[DRIVER_KEY] = driver
    app[CAPACITY_KEY] = capacity
    app[RELAY_KEY] = relay
    app[NETWORK_KEY] = network
    app.router.add_post("/calls/{method}", _call)
    app.router.add_post("/network/{method}", _network_call)
    app.router.add_get("/events", relay.follow)
    app.on_shutdown.append(lambda _app: relay.close())
    # Imported here: the agent's users need the fake only in tests.
    from openhosting.hypervisor.fake import FakeHypervisor

    if isinstance(driver, FakeHypervisor):
        app.router.add_post("/faults/{name}", _fault)
    return app


@web.middleware
async def _control_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    transport = request.transport
    role, name = peer_role(transport.get_extra_info("peercert") if transport else None)
    if role != CONTROL:
        log.warning("event=agent_refused role=%s name=%s path=%s", role, name, request.path)
        return _error(403, f"only the control plane may call a host agent, not {role} {name}")
    return await handler(request)


async def _call(request: web.Request) -> web.StreamResponse:
    driver: Any = request.app[DRIVER_KEY]
    method = request.match_info["method"]
    if method in HOST_CALLS:
        return await _host_call(request, method)
    if method in EXPORT_CALLS:
        return await export_call(request, method)
    if (call := CALLS.get(method)) is None:
        return _error(404, f"no driver method {method!r}")
    try:
        line = await request.content.readline()
        record = decode(call.request, json.loads(line))
    except (CallError, ValueError) as error:
        return _error(400, f"{method}: {error}")
    if method in MIGRATING and not hasattr(driver, method):
        return _error(409, f"{method}: this host's driver cannot move VMs")
    try:
        if method == "start":
            storage = request.app.get(STORAGE_KEY)
            if storage is not None:
                record = own_drive_paths(storage, record)
            record = cached_copy_paths(request.app.get(CACHE_KEY), record)
            return await _start(request, driver, record)
        if method == "save_state":
            return await _save_state(request, driver, record.server, record.timeout)
        if method == "prepare_incoming" and (storage := request.app.get(STORAGE_KEY)):
            # The copies are made as this host's own files of the drives; a standard drive's
            # cdrom is its copy in this host's image cache.
            start = own_drive_paths(storage, record.start)
            start = cached_copy_paths(request.app.get(CACHE_KEY), start)
            record = dataclasses.replace(record, start=start)
        if method in WHOLE_RECORD:
            answer = getattr(driver, method)(record)
        else:
            answer = getattr(driver, method)(**arguments(record))
        if inspect.isawaitable(answer):
            answer = await answer
    except HypervisorError as error:
        return _error(409, str(error))
    except ValueError as error:  # a request the driver refuses as such
        return _error(400, f"{method}: {error}")
    return web.json_response({"answer": encode(answer)})


def own_drive_paths(storage: LocalDriveStorage, record: StartRequest) -> StartRequest:
    """`record` with each disk this host holds (named by UUID and tier) at its path in this
    host's drive directory, whatever path the control plane named it by."""
    if not any(disk.drive and not disk.cache for disk in record.spec.disks):
        return record
    try:
        disks = tuple(
            dataclasses.replace(disk, path=storage.disk_path(disk.drive, disk.tier))
            if disk.drive and not disk.cache
            else disk
            for disk in record.spec.disks
        )
    except ApiError as error:  # a tier this host's configuration does not have
        raise HypervisorError(error.message) from None
    return dataclasses.replace(record, spec=dataclasses.replace(record.spec, disks=disks))


def cached_copy_paths(cache: ImageCache | None, record: StartRequest) -> StartRequest:
    """`record` with each cdrom naming a standard drive's copy (`DiskSpec.cache`) at that
    copy's path in this host's image cache; HypervisorError when the copy is not here (the
    control plane fills it before the start)."""
    if not any(disk.cache for disk in record.spec.disks):
        return record
    if cache is None:
        raise HypervisorError("this agent keeps no image cache")
    disks = []
    for disk in record.spec.disks:
        if disk.cache:
            path = cache.path_of(disk.drive, disk.cache)
            if not path.is_file():
                raise HypervisorError(
                    f"no copy of standard drive {disk.drive} (generation {disk.cache}) here"
                )
            disk = dataclasses.replace(disk, path=path)
        disks.append(disk)
    return dataclasses.replace(record, spec=dataclasses.replace(record.spec, disks=tuple(disks)))


async def _host_call(request: web.Request, method: str) -> web.Response:
    """One of the agent's own calls (`HOST_CALLS`): about the host, not a VM."""
    try:
        decode(HOST_CALLS[method].request, json.loads(await request.content.readline()))
    except (CallError, ValueError) as error:
        return _error(400, f"{method}: {error}")
    measure: Any = request.app[CAPACITY_KEY]
    if measure is None:
        return _error(404, f"{method}: not served by this agent")
    try:
        answer = await asyncio.to_thread(measure)  # /proc and statvfs: file system reads
    except (OSError, ValueError) as error:
        return _error(409, f"{method}: cannot measure the host: {error}")
    return web.json_response({"answer": encode(answer)})


async def _network_call(request: web.Request) -> web.Response:
    """One call of this host's network driver (`NETWORK_CALLS`)."""
    network: AgentNetwork | None = request.app[NETWORK_KEY]  # type: ignore[assignment]
    method = request.match_info["method"]
    if (call := NETWORK_CALLS.get(method)) is None:
        return _error(404, f"no network method {method!r}")
    if network is None:
        return _error(404, f"{method}: this agent serves no network")
    try:
        record = decode(call.request, json.loads(await request.content.readline()))
    except (CallError, ValueError) as error:
        return _error(400, f"{method}: {error}")
    driver = network.driver
    answer: Any = None
    try:
        if method == "settings":
            answer = _facts(driver)
        elif method == "start":
            await network.start()
        else:
            if method in NEEDS_START:
                await network.start()
            answer = await getattr(driver, method)(**arguments(record))
            if method == "attach":
                answer = tuple(sorted(answer.items()))
    except NetworkError as error:
        return _error(409, f"{method}: {error}")
    except (ValueError, OSError) as error:  # a request the driver refuses, a failed command
        return _error(409, f"{method}: {error}")
    return web.json_response({"answer": encode(answer)})


def _facts(driver: NetworkDriver) -> NetworkFacts:
    probe = NicPlan(server="", index=0, mac="")
    return NetworkFacts(
        mode=driver.mode,
        namespace=driver.namespace,
        pool_for_auto=driver.pool_for_auto,
        vnc_address=driver.vnc_address,
        default_guest_address=driver.guest_address(probe),
    )


async def _start(request: web.Request, driver: Any, record: StartRequest) -> web.Response:
    restore = None
    if request.query.get("restore") == "1":
        loop = asyncio.get_running_loop()

        def restore(fd: int) -> None:  # in the driver's worker thread
            while chunk := asyncio.run_coroutine_threadsafe(
                request.content.read(CHUNK), loop
            ).result():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]

    status = await driver.start(record, restore=restore)
    return web.json_response({"answer": encode(status)})


async def _save_state(
    request: web.Request, driver: Any, server: str, timeout: float
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    loop = asyncio.get_running_loop()

    async def send(chunk: bytes) -> None:
        if not response.prepared:
            await response.prepare(request)
        await response.write(chunk)

    def sink(fd: int) -> None:  # in the driver's worker thread
        while chunk := os.read(fd, CHUNK):
            asyncio.run_coroutine_threadsafe(send(chunk), loop).result()

    try:
        await driver.save_state(server, sink, timeout)
    except HypervisorError:
        if not response.prepared:
            raise  # nothing sent yet: a 409 says why
        # Begun: the state is cut short with the connection, which the caller sees.
        if request.transport is not None:
            request.transport.abort()
        return response
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


async def _fault(request: web.Request) -> web.Response:
    fake: Any = request.app[DRIVER_KEY]
    name = request.match_info["name"]
    try:
        body = await request.json()
        if name == "crash":
            await fake.crash(str(body["server"]))
        elif name == "pause":
            await fake.pause(str(body["server"]), str(body.get("reason", "paused")))
        elif name == "fail_next_start":
            fake.fail_next_start()
        elif name == "delay_next_start":
            fake.delay_next_start(min(float(body["seconds"]), 60.0))
        elif name == "print_serial":
            fake.print_serial(str(body["server"]), str(body["text"]).encode())
        elif name == "take_port":
            fake.host.ports_in_use.add((str(body["address"]), int(body["port"])))
        else:
            return _error(404, f"no fault {name!r}")
    except HypervisorError as error:
        return _error(409, str(error))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return _error(400, f"{name}: {error!r}")
    return web.json_response({"answer": None})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
