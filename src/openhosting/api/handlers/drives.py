"""Handlers of the drive commands (docs/api.md §4)."""

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from openhosting.api.answer_headers import prepare
from openhosting.api.content_coding import GzipStreamDecoder
from openhosting.api.context import platform_of, transfer_limiter_of, user_of
from openhosting.api.negotiation import read_body_chunk, read_properties
from openhosting.api.responses import (
    MAX_ZEROS_AS_GZIP,
    SEND_BUFFER,
    FileSliceResponse,
    accepts_gzip,
    corked,
    widen_send_buffer,
    write_in_slices,
    zeros_as_gzip,
)
from openhosting.api.socket_takeover import hand_back, sent_from_thread, taken_over
from openhosting.errors import FullError, UsageError
from openhosting.reverter import Reverter
from openhosting.storage.drive_hash import HASH_ALGORITHM
from openhosting.storage.drive_storage import DriveRead
from openhosting.storage.drive_transfers import ReadPlan
from openhosting.storage.remote_storage import RemoteRead
from openhosting.wire.payload import Properties, PropertiesList, ValueList
from openhosting.wire.sizes import parse_size

T = TypeVar("T")


def _drive(request: web.Request) -> str:
    return request.match_info["drive"].lower()


async def list_drives(request: web.Request) -> ValueList:
    platform = platform_of(request)
    # The listing is kept rendered until the next commit (drives.listing). On SQLite it is
    # called here, not through the store's executor: a coroutine more costs a µs or two of
    # a request of about twenty. Elsewhere a kept listing is answered here too (a worker
    # thread's round trip cost more than the rest of the request) and only a listing to
    # read is read in a worker thread.
    user = user_of(request)
    if platform.store.off_loop:
        kept = platform.drives.kept_listing(user)
        return kept if kept is not None else await platform.store.run(platform.drives.listing, user)
    return platform.drives.listing(user)


async def info_all(request: web.Request) -> PropertiesList:
    # Built in a worker thread above a few dozen drives (services/off_loop.py).
    return PropertiesList(await platform_of(request).drives.info_all(user_of(request)))


async def info(request: web.Request) -> Properties:
    platform = platform_of(request)
    user, drive = user_of(request), _drive(request)
    if platform.store.off_loop:  # as list_drives
        kept = platform.drives.kept_info_payload(user, drive)
        if kept is not None:
            return kept
        return await platform.store.run(platform.drives.info_payload, user, drive)
    return platform.drives.info_payload(user, drive)


async def create(request: web.Request) -> Properties:
    platform = platform_of(request)
    properties = await read_properties(request, platform.config.api.max_body_bytes)
    return Properties(await platform.drives.create(user_of(request), properties))


async def set_drive(request: web.Request) -> Properties:
    platform = platform_of(request)
    properties = await read_properties(request, platform.config.api.max_body_bytes)
    return Properties(await platform.drives.set(user_of(request), _drive(request), properties))


async def destroy(request: web.Request) -> None:
    await platform_of(request).drives.destroy(user_of(request), _drive(request))


def _range(request: web.Request) -> tuple[int, int | None]:
    """The `/OFFSET[/SIZE]` of a read or hash: offset (default 0) and size (None: to the
    end)."""
    offset = parse_size(request.match_info.get("offset", "0"), "offset")
    size_text = request.match_info.get("size")
    return offset, parse_size(size_text, "size") if size_text is not None else None


async def read(request: web.Request) -> web.StreamResponse:
    offset, length = _range(request)
    with transfer_limiter_of(request).admit(user_of(request)):
        return await _read(request, offset, length)


async def hash_range(request: web.Request) -> Properties:
    """The SHA-256 of a range of the drive's bytes (decrypted), clamped to the drive's end as
    a read is. It reads the whole range, so it counts as a transfer; its bytes are not sent,
    so they are not counted as read."""
    offset, length = _range(request)
    with transfer_limiter_of(request).admit(user_of(request)):
        plan = platform_of(request).drives.open_read(
            user_of(request), _drive(request), offset, length
        )
        try:
            # No `begin`: a remote drive is hashed where it is.
            digest = await _while_client_stays(request, plan.sha256())
        finally:
            plan.close()
    return Properties(
        {
            "drive": plan.drive,
            "offset": plan.offset,
            "size": plan.count,
            "algorithm": HASH_ALGORITHM,
            "hash": digest,
        }
    )


# How often a long answer that sends nothing meanwhile (a hash) looks whether its client is
# still there.
CLIENT_POLL_SECONDS = 0.5


async def _while_client_stays(request: web.Request, work: Coroutine[Any, Any, T]) -> T:
    """What `work` returns; cancelled (ConnectionResetError) once the client has gone away.
    The daemon's server does not cancel a handler whose client leaves (aiohttp's
    `handler_cancellation` is off; its test server turns it on), and a hash sends nothing
    until its end to find out by: an abandoned hash of a large drive went on for hours,
    holding a transfer and keeping the drive from being shrunk."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_POLL_SECONDS)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client went away before the answer")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its thread stops at its next piece: the drive stays open till then


async def _read(request: web.Request, offset: int, length: int | None) -> web.StreamResponse:
    drives = platform_of(request).drives
    plan = drives.open_read(user_of(request), _drive(request), offset, length)
    response: web.StreamResponse
    try:
        await plan.begin()  # refused (its host unreachable, say) before anything is answered
        if (
            request.method != "HEAD"
            and plan.count <= MAX_ZEROS_AS_GZIP
            and accepts_gzip(request)
            and plan.reads_only_zeros()
        ):
            response = zeros_as_gzip(plan.count)
            await prepare(request, response)
        elif plan.plain_file is not None:
            response = FileSliceResponse(plan.plain_file.fileno(), plan.offset, plan.count)
            await prepare(request, response)
        elif isinstance(plan, RemoteRead):
            response = await _send_remote(request, plan)
        else:
            response = await _stream_decrypted(request, plan)
    finally:
        plan.close()
    if request.method != "HEAD":  # a HEAD sends no bytes: nothing was read
        drives.record_read(plan.drive, plan.count)
    return response


async def _stream_decrypted(request: web.Request, plan: DriveRead) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = plan.count
    writer = await prepare(request, response)
    if request.method != "HEAD" and plan.count and writer is not None:
        if isinstance(plan, ReadPlan):  # this host's encrypted drive
            await _send_lent_pieces(request, response, writer, plan)
        else:
            transport = request.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if plan.count > SEND_BUFFER:
                widen_send_buffer(sock)
            with corked(sock):
                async for chunk in plan.chunks():
                    await write_in_slices(response, chunk)
    await response.write_eof()
    return response


async def _send_lent_pieces(
    request: web.Request,
    response: web.StreamResponse,
    writer: AbstractStreamWriter,
    plan: ReadPlan,
) -> None:
    """Send a local encrypted read from the few buffers it decrypts into: with the socket
    taken over (the head already sent), a worker thread sends each piece on it, handing what
    the client does not take in time back to the transport. Each piece is out of the
    transport (none of it queued there, by reference or not) before the next is asked for,
    which reuses buffers."""
    # Closed at the end, not left to the garbage collector: its reads end before the
    # drive's file is closed.
    async with (
        taken_over(request, writer, plan.count) as client,
        contextlib.aclosing(plan.lent_pieces()) as pieces,
    ):
        async for piece in pieces:
            if request.transport is None or request.transport.is_closing():
                # Closed by us (a shutdown, say) or by the client between pieces: the
                # duplicate would keep its connection open.
                raise ConnectionResetError("Connection lost")
            sent = await sent_from_thread(client, piece)
            request.writer.output_size += sent  # the access log's size counts them
            if sent < len(piece):
                await hand_back(response, writer, piece[sent:])


async def _send_remote(request: web.Request, plan: RemoteRead) -> web.StreamResponse:
    """A drive of an agent's host: its stream's thread sends the bytes to the client's
    socket itself, as they come from the agent (docs/cluster.md, 'Drive bytes on the
    agents')."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = plan.count
    writer = await prepare(request, response)
    if request.method != "HEAD" and plan.count and writer is not None:
        async with taken_over(request, writer, plan.count) as client:
            await plan.send_to(client)
    await response.write_eof()
    return response


async def write(request: web.Request) -> None:
    """Stream the body to the drive; acknowledge (204) only once it is durable."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise UsageError("Chunked transfer encoding is not supported: send a Content-Length")
    declared = request.content_length
    if declared is None:
        raise UsageError("Content-Length is required for a drive write")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UsageError(f"Unsupported Content-Encoding {encoding!r}: use gzip or none")
    offset = parse_size(request.match_info.get("offset", "0"), "offset")
    with transfer_limiter_of(request).admit(user_of(request)):
        await _write(request, offset, declared, encoding)


async def _write(request: web.Request, offset: int, declared: int, encoding: str) -> None:
    # A gzip body is good or bad only at its end: its bytes are staged and reach the drive
    # once it has proved whole. A raw body goes straight to the drive: what could refuse it
    # (its end past the drive's, no room for its blocks) is checked before its first byte,
    # after which only its client can fail it, by going away.
    decoder = GzipStreamDecoder() if encoding != "identity" else None
    writer = platform_of(request).drives.begin_write(
        user_of(request), _drive(request), offset, decoder
    )
    async with Reverter() as revert:
        revert.add(writer.abort)
        if decoder is None:  # a raw body: straight to the drive
            if declared > writer.remaining:
                raise FullError(
                    f"Write of {declared} bytes at offset {offset} would pass the drive's end:"
                    " nothing was written"
                )
            await writer.reserve(declared)
        received = 0
        while chunk := await read_body_chunk(request):
            received += len(chunk)
            await writer.write(chunk)  # a gzip body as it came: the writer inflates it
        if received != declared:
            raise UsageError(f"Request body incomplete: {received} of {declared} bytes")
        await writer.finish()
        revert.success()
