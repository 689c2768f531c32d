"""The host agent's export calls: this host's drives served over NBD to the VMs of other hosts
(hypervisor/nbd_exports.py runs them), called by the control plane as `POST /calls/METHOD`
like the driver's calls (`EXPORT_CALLS` in hypervisor/calls.py), control role only.

- `export_drive` (`ExportRequest`: server, drive UUID and tier, the client host) → the
  `NbdSource` its QEMU connects to. The drive's file is this host's own, found by UUID and
  tier in its drive directories (as a start's are): no path crosses the wire.
- `end_exports` (server) → null: every export for that server ended.
- `exports` → the servers with an export running here (the control plane ends those whose
  VM does not run, when it finds the agent back).

A refusal is 409 `{"error": message}` (a `HypervisorError`), a malformed call 400.
"""

from __future__ import annotations

import json

from aiohttp import web

from openhosting.agent.storage_routes import STORAGE_KEY
from openhosting.errors import ApiError
from openhosting.hypervisor.calls import EXPORT_CALLS, CallError, decode, encode
from openhosting.hypervisor.driver import ExportRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.nbd_exports import DriveExports
from openhosting.hypervisor.spec import NbdSource
from openhosting.storage.local_storage import LocalDriveStorage

EXPORTS_KEY = web.AppKey("exports", DriveExports)


async def export_call(request: web.Request, method: str) -> web.Response:
    """One of `EXPORT_CALLS`, answered as the driver's calls are."""
    try:
        record = decode(EXPORT_CALLS[method].request, json.loads(await request.content.readline()))
    except (CallError, ValueError) as error:
        return _error(400, f"{method}: {error}")
    exports = request.app.get(EXPORTS_KEY)
    storage = request.app.get(STORAGE_KEY)
    if exports is None or storage is None:
        return _error(409, f"{method}: this agent serves no drives to other hosts")
    answer: object = None
    try:
        if method == "export_drive":
            answer = await _export(exports, storage, record)
        elif method == "end_exports":
            await exports.end(record.server)
        else:
            answer = exports.servers()
    except HypervisorError as error:
        return _error(409, str(error))
    return web.json_response({"answer": encode(answer)})


async def _export(
    exports: DriveExports, storage: LocalDriveStorage, record: ExportRequest
) -> NbdSource:
    try:
        path = storage.disk_path(record.drive, record.tier)
    except ApiError as error:  # a tier this host's configuration does not have
        raise HypervisorError(error.message) from None
    return await exports.export(record, path)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
