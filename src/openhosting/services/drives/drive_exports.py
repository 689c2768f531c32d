"""Drives of one host used by a server running on another: each is served by its own host's
agent over NBD with TLS (an `ExportingDriver`: hypervisor/nbd_exports.py runs the export) to
the server's host, whose QEMU opens it as it opens a local drive (docs/cluster.md, "Drives of
one host used by a server on another").

An export lives as long as the server's VM: made just before the VM starts (undone with the
start), ended when the VM ends, whatever ended it (`close`); those an API node finds running
for a server whose VM does not run (its node died between the two, an agent back after
being away) are ended when it finds the agent back (`reconcile`).
"""

import logging
from collections.abc import Callable, Collection, Sequence

from openhosting.errors import BusyError, UnavailableError
from openhosting.hypervisor.driver import ExportingDriver, ExportRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.spec import NbdSource
from openhosting.reverter import Reverter
from openhosting.services.cluster.host_drivers import HostDrivers
from openhosting.services.drives.drives import AttachableDrive

log = logging.getLogger("openhosting.servers")


class DriveExports:
    """The NBD exports of the drives of servers running on another host than theirs.
    `host_down` says whether a host is offline or its agent did not answer the last look."""

    def __init__(self, drivers: HostDrivers, host_down: Callable[[str], bool]) -> None:
        self._drivers = drivers
        self._host_down = host_down

    def elsewhere(
        self, server: str, running_on: str, drives: Sequence[AttachableDrive]
    ) -> list[AttachableDrive]:
        """The drives of `drives` held by another host than `running_on` (the server's),
        each to be served over NBD. 409 `busy` when one cannot be (a host without an agent
        on either side), 503 `failed` naming a drive's host that is down."""
        elsewhere = [d for d in drives if d.host and d.host != running_on]
        for drive in elsewhere:
            if running_on not in self._drivers.remote:
                raise BusyError(
                    f"Drive {drive.uuid} is on host {drive.host} and server {server} would run"
                    f" on host {running_on}, which runs VMs without a host agent: only an"
                    " agent's host attaches another host's drive (over NBD)"
                )
            if self._host_down(drive.host):
                raise UnavailableError(
                    f"Host {drive.host} is offline or its agent does not answer: server"
                    f" {server} cannot start without its drive {drive.uuid}, which is there"
                )
            if not isinstance(self._drivers.remote.get(drive.host), ExportingDriver):
                raise BusyError(
                    f"Drive {drive.uuid} is on host {drive.host}, which has no agent here to"
                    f" serve it to host {running_on}"
                )
        return elsewhere

    async def open(
        self,
        server: str,
        running_on: str,
        drives: Sequence[tuple[AttachableDrive, bool]],
        revert: Reverter,
    ) -> dict[str, NbdSource]:
        """Export each drive (with whether it is attached read-only) from its host to
        `running_on`; drive UUID → where its QEMU connects. Each export's end is added to
        `revert` as it is made."""
        sources: dict[str, NbdSource] = {}
        for drive, read_only in drives:
            exporter = self._exporter(drive.host)
            request = ExportRequest(server, drive.uuid, drive.tier, running_on, read_only)
            try:
                sources[drive.uuid] = await exporter.export_drive(request)
            finally:
                # Ended even when the answer was lost: an export made stays no longer.
                revert.add(lambda host=drive.host: self._end(server, host))
        return sources

    async def close(self, server: str, hosts: Collection[str]) -> None:
        """End the exports of `server` on each of `hosts` (its drives' hosts but its own); an
        agent that does not answer keeps them until it is found back (`reconcile`)."""
        for host in sorted(set(hosts)):
            if isinstance(self._drivers.remote.get(host), ExportingDriver):
                await self._end(server, host)

    async def reconcile(self, host: str, keep: Callable[[str], bool]) -> None:
        """End the exports of `host` for every server that `keep` does not keep (its VM
        does not run, nor is it starting)."""
        exporter = self._drivers.remote.get(host)
        if not isinstance(exporter, ExportingDriver):
            return
        try:
            servers = await exporter.exports()
        except HypervisorError as error:
            log.warning("event=nbd_exports_reconcile_failed host=%s error=%s", host, error)
            return
        for server in servers:
            if not keep(server):
                log.warning("event=nbd_export_stale server=%s host=%s", server, host)
                await self._end(server, host)

    def _exporter(self, host: str) -> ExportingDriver:
        exporter = self._drivers.remote.get(host)
        assert isinstance(exporter, ExportingDriver)  # checked by `elsewhere`
        return exporter

    async def _end(self, server: str, host: str) -> None:
        try:
            await self._exporter(host).end_exports(server)
        except HypervisorError as error:
            log.warning(
                "event=nbd_export_end_failed server=%s host=%s error=%s", server, host, error
            )  # fmt: skip
