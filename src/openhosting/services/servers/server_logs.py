"""The serial logs of servers: their bound, and what is kept of a server that is gone.

A running VM's log lives in its run directory with a hard bound (`hypervisor.serial_log_kib`
per file, `hypervisor.serial_log_files` files; see `hypervisor/serial_log.py`). When a server
is destroyed (a `destroy`, or a non-persistent server whose guest powered off or crashed),
its run directory goes, but the last of its log is kept in
`<state>/logs/servers/UUID.log` for `hypervisor.serial_log_retention_days`, so its owner or the
operator can still see why it ended. Kept logs are pruned at start and hourly.
"""

import asyncio
import logging
import os
import time
from pathlib import Path

from openhosting.config import Config

log = logging.getLogger("openhosting.servers")

SECONDS_PER_DAY = 86400
PRUNE_INTERVAL = 3600


class ServerLogs:
    """The serial log settings of the platform and the kept logs of destroyed servers."""

    def __init__(self, config: Config) -> None:
        settings = config.hypervisor
        self.directory = config.state_path / "logs" / "servers"
        self._retention = max(0, settings.serial_log_retention_days) * SECONDS_PER_DAY

    def kept_path(self, uuid: str) -> Path:
        return self.directory / f"{uuid}.log"

    def keep(self, uuid: str, content: bytes | None) -> None:
        """Keep `content`, the last of the log of server `uuid`, which is being destroyed
        (its run directory's log, as the hypervisor driver reads it within its bound)."""
        if not self._retention:
            return
        if not content:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.kept_path(uuid)
        partial = target.with_name(f".{target.name}.partial")
        # Written aside and renamed: a reader never sees half a log.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        partial.replace(target)
        log.info("event=server_log_kept server=%s bytes=%s", uuid, len(content))

    def read(self, uuid: str, live: bytes | None) -> bytes | None:
        """The serial log of server `uuid`: its `live` log (its run directory's, from the
        hypervisor driver) if it has one, else its kept log; None if there is neither."""
        if live is not None:
            return live
        try:
            return self.kept_path(uuid).read_bytes()
        except FileNotFoundError:
            return None

    def prune(self, now: float | None = None) -> int:
        """Remove the kept logs older than the retention; returns how many went."""
        if not self.directory.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self._retention
        count = 0
        for path in self.directory.glob("*.log"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    count += 1
            except FileNotFoundError:
                continue
        if count:
            log.info("event=server_logs_pruned count=%s", count)
        return count

    async def prune_hourly(self) -> None:
        """Prune now and every hour, until cancelled (the daemon's life)."""
        while True:
            await asyncio.to_thread(self.prune)
            await asyncio.sleep(PRUNE_INTERVAL)
