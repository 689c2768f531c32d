"""The host agent's drive routes: the bytes of the drives this host holds, served to the control
plane (storage/remote_storage.py calls them) over the agent's mutual TLS, control role only
(agent/server.py's middleware runs before these).

Every request's body is one line of JSON (`StorageCall`, storage/storage_calls.py: the
drive's UUID and tier, and what the call needs). Keys travel base64 in that line, as a start's
passphrases do in its record.

- `POST /storage/create` → `{"answer": master key (base64) or null}`
- `POST /storage/resize`, `/storage/destroy`, `/storage/allocate` → `{"answer": null}`
- `POST /storage/available` → `{"answer": true|false}`
- `POST /storage/files` (first line `{"after": UUID or "", "limit": N}`, no drive) → `{"answer":
  [[UUID, tier, size, seconds since modified], ...]}`: one page of this host's drive files in
  UUID order (services/drives/drive_orphans.py pages through them)
- `POST /storage/remove_orphan` (with `age`) → `{"answer": true|false}`: the file removed only
  if unmodified for `age` seconds, as this host's clock tells
- `POST /storage/hash` → `{"answer": hex SHA-256 of the range}`
- `POST /storage/image` (first line an `ImageCall`: two drives of this host, a conversion) →
  an imaging job run here (storage/host_imaging.py), answered as it runs with one JSON line
  of progress every `PROGRESS_SECONDS` (`image_line`), then its end or why it failed. The
  job lives as long as its call: once the control plane's connection goes, it is stopped and
  waited for before the call ends; the agent stopping stops it too (its end: a failure).

A read's and a write's bytes do not go through these routes but on a connection of their own
(storage/stream_wire.py, served by agent/drive_streams.py).

A refusal is `{"error": message, "kind": X-Elastic-Error kind}` with the kind's status (507
full, 400 usage, 404 missing...), which the control plane raises again as the same error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aiohttp import web

from openhosting.errors import ApiError, MissingError, UsageError
from openhosting.storage.drive_storage import DriveBytes
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.host_imaging import HostImaging
from openhosting.storage.imaging import ImagingStopped
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.storage_calls import FilesCall, ImageCall, StorageCall, image_line

log = logging.getLogger("openhosting.agent")

STORAGE_KEY = web.AppKey("storage", LocalDriveStorage)
# The imaging jobs under way, stopped when the agent stops (not waited for 60 s, aiohttp's
# grace for the requests under way).
IMAGING_KEY = web.AppKey("imaging", set[HostImaging])
# The first line of a storage call's body.
MAX_CALL_LINE = 1 << 16
# Seconds between two lines of a running imaging job's answer: its progress, and the sign
# that the agent is there (to the control plane) and the control plane is (a line written to
# a connection that went fails, and the job stops).
PROGRESS_SECONDS = 0.5
# Seconds an imaging job's lines may go unacknowledged (the control plane's host gone silent,
# no connection end ever coming) before the connection fails and the job stops, rather than
# after TCP's retries (about 15 minutes).
SILENCE_SECONDS = 30


def add_storage_routes(app: web.Application, storage: LocalDriveStorage) -> None:
    app[STORAGE_KEY] = storage
    for action, handler in (
        ("create", _create),
        ("resize", _resize),
        ("destroy", _destroy),
        ("allocate", _allocate),
        ("available", _available),
        ("hash", _hash),
        ("remove_orphan", _remove_orphan),
    ):
        app.router.add_post(f"/storage/{action}", _answering(StorageCall.decode, handler))
    app.router.add_post("/storage/files", _answering(FilesCall.decode, _files))
    app.router.add_post("/storage/image", _answering(ImageCall.decode, _image))
    app[IMAGING_KEY] = set()
    app.on_shutdown.append(_stop_jobs)


CallT = TypeVar("CallT", StorageCall, FilesCall, ImageCall)
Handler = Callable[[web.Request, LocalDriveStorage, CallT], Awaitable[web.StreamResponse]]


def _answering(
    decode: Callable[[bytes], CallT], handler: Handler[CallT]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The call decoded from its first line by `decode`, and an API error answered with its
    kind."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            line = await request.content.readline()
            if len(line) > MAX_CALL_LINE:
                raise UsageError("storage call line too long")
            return await handler(request, request.app[STORAGE_KEY], decode(line))
        except ApiError as error:
            return web.json_response(
                {"error": error.message, "kind": error.kind}, status=error.status
            )

    return handle


def _answer(value: object) -> web.Response:
    return web.json_response({"answer": value})


async def _create(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    key = await storage.create(call.drive, call.tier, call.size, call.passphrase)
    log.info("event=agent_drive_created drive=%s tier=%s size=%s", call.drive, call.tier, call.size)
    return _answer(None if key is None else base64.b64encode(key).decode())


async def _resize(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    _check_exists(storage, call)
    await storage.resize(call.drive, call.tier, call.size, call.master_key, call.kept)
    return _answer(None)


async def _destroy(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    await storage.destroy(call.drive, call.tier)
    log.info("event=agent_drive_destroyed drive=%s tier=%s", call.drive, call.tier)
    return _answer(None)


async def _remove_orphan(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    removed = await storage.remove_orphan(call.drive, call.tier, call.age)
    if removed:
        log.warning("event=agent_drive_orphan_removed drive=%s tier=%s", call.drive, call.tier)
    return _answer(removed)


async def _files(
    _request: web.Request, storage: LocalDriveStorage, call: FilesCall
) -> web.Response:
    """One page of this host's drive files (no drive named: not a `StorageCall`)."""
    files = await storage.list_files(call.after, call.limit)
    return _answer([[file.drive, file.tier, file.size, file.age] for file in files])


async def _available(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    return _answer(storage.is_available(call.drive, call.tier))


def _check_exists(storage: LocalDriveStorage, call: StorageCall) -> None:
    if not storage.is_available(call.drive, call.tier):
        raise MissingError(f"Drive {call.drive} has no file on this host")


async def _allocate(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    """Give a raw write's range its blocks before its bytes come (`DriveWrite.reserve`)."""
    _check_exists(storage, call)
    writer = storage.open_write(_bytes_of(call), call.offset, call.size, False, _nothing)
    try:
        await writer.reserve(call.count)
    finally:
        # Not an undo: the blocks stay given; the writer only served to give them, and a
        # Reverter never told success() logged each allocation as left open.
        await writer.abort()
    return _answer(None)


async def _hash(
    _request: web.Request, storage: LocalDriveStorage, call: StorageCall
) -> web.Response:
    _check_exists(storage, call)
    plan = storage.open_read(_bytes_of(call), call.offset, call.count, _none)
    try:
        return _answer(await plan.sha256())
    finally:
        plan.close()


async def _image(
    request: web.Request, storage: LocalDriveStorage, call: ImageCall
) -> web.StreamResponse:
    """Run an imaging job between two drives of this host, answering its progress as it goes,
    then its end; stopped (and waited for) once the control plane's connection goes."""
    job = HostImaging(storage, call)
    job.check()  # refused with its status before anything begins
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    _bound_silence(request)
    log.info(
        "event=agent_imaging_started drive=%s source=%s conversion=%s",
        call.drive, call.source, call.conversion or "none",
    )  # fmt: skip
    pool = ThreadPoolExecutor(1, thread_name_prefix="agent-imaging")
    running = asyncio.get_running_loop().run_in_executor(pool, job.run)
    pool.shutdown(wait=False)  # its one thread ends with the job
    jobs = request.app[IMAGING_KEY]
    jobs.add(job)
    gone: ConnectionError | None = None
    try:
        await response.write(await _follow(job, running, response))
        await response.write_eof()
    except ConnectionError as error:  # the control plane went: nobody follows the job
        gone = error
    finally:
        job.stop()  # ended already, or ends at its next tick: no work outlives the call
        await asyncio.gather(running, return_exceptions=True)
        jobs.discard(job)
    if gone is not None:
        log.warning(
            "event=agent_imaging_stopped drive=%s source=%s reason=control_plane_gone error=%s",
            call.drive, call.source, gone,
        )  # fmt: skip
    return response


async def _follow(
    job: HostImaging, running: asyncio.Future[int], response: web.StreamResponse
) -> bytes:
    """Write the job's progress every `PROGRESS_SECONDS` until it ends; its last line."""
    while not running.done():
        await asyncio.wait([running], timeout=PROGRESS_SECONDS)
        if not running.done():
            await response.write(image_line(done=job.done, total=job.total))
    call = job.call
    try:
        total = running.result()
    except ImagingStopped:  # while the control plane follows it: by `_stop_jobs`
        return image_line(error="the host's agent stopped during the job", kind="failed")
    except GzipStreamError as error:
        return image_line(error=error.message, kind=error.kind, gzip=True)
    except ApiError as error:
        return image_line(error=error.message, kind=error.kind)
    except OSError as error:
        return image_line(error=f"storage error: {error.strerror or error}", kind="failed")
    except Exception:  # a fault of ours: said as such, not as the agent gone
        log.exception("event=agent_imaging_internal_error drive=%s", call.drive)
        return image_line(error="internal error; the host agent's log has it", kind="system")
    log.info(
        "event=agent_imaging_done drive=%s source=%s conversion=%s bytes=%s",
        call.drive, call.source, call.conversion or "none", total,
    )  # fmt: skip
    return image_line(end=total)


async def _stop_jobs(app: web.Application) -> None:
    """The agent stops: its imaging jobs end at their next tick, each call with its failure."""
    for job in app[IMAGING_KEY]:
        job.stop()


def _bound_silence(request: web.Request) -> None:
    """Unacknowledged bytes fail the connection after `SILENCE_SECONDS` (TCP_USER_TIMEOUT)."""
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, SILENCE_SECONDS * 1000)


def _nothing(_written: int | None) -> None:
    """The agent counts nothing: the control plane keeps the drive's counters."""


def _none() -> None:
    """A read's end: nothing to count here either."""


def _bytes_of(call: StorageCall) -> DriveBytes:
    return DriveBytes(call.drive, call.tier, call.master_key)
