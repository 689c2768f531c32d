"""The order of a live migration's calls over two `MigratingDriver`s, and its undo: what
moves a running VM between any two drivers, in-process or agents of two hosts. Only the
driver interface: the QMP steps behind each call are hypervisor/migration.py's, so the
services may use this (services/servers/server_moves.py) without reaching QEMU's parts.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from openhosting.hypervisor.driver import IncomingInfo, IncomingRequest, MigratingDriver, VmStatus
from openhosting.hypervisor.errors import HypervisorError
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.hypervisor")


@dataclass(frozen=True)
class MovedVm:
    """A VM that moved: its status on the target, and the target's answer (where it took
    the streams, where each drive landed)."""

    status: VmStatus
    target: IncomingInfo


async def move_vm(
    source: MigratingDriver, target: MigratingDriver, request: IncomingRequest, timeout: float
) -> MovedVm:
    """Move the running VM of `request.start.spec.uuid` from `source` to `target`. On
    success it runs on the target and is gone from the source; on failure it runs on the
    source as before and nothing of it is left on the target."""
    server = request.start.spec.uuid
    abort = functools.partial(target.abort_incoming, server)
    async with Reverter() as revert:
        info = await target.prepare_incoming(request)
        revert.add(abort)
        await source.migrate_out(server, info, timeout)
        revert.add(functools.partial(source.cancel_migrate_out, server))
        # Again (it does nothing twice), so that it runs first: the target may have run the
        # guest already; it ends before the source runs it again, never both at once.
        revert.add(abort)
        status = await target.finish_incoming(server, timeout)
        revert.success()
    try:
        await source.end_migrated(server)
    except HypervisorError as error:
        # The guest runs on the target: the migration is done. A source QEMU left paused
        # (its drives let go) is the host's leftover, found again as unheld.
        log.error("event=vm_migrated_source_left server=%s error=%s", server, error)
    log.info("event=vm_migrated server=%s", server)
    return MovedVm(status, info)


async def live_migrate(
    source: MigratingDriver, target: MigratingDriver, request: IncomingRequest, timeout: float
) -> VmStatus:
    """`move_vm`, answering the VM's status on the target."""
    return (await move_vm(source, target, request, timeout)).status
