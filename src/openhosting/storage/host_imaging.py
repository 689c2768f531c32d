"""An imaging job between two drives of this host, run where they are: a host agent runs it for
the control plane (agent/storage_routes.py's `/storage/image`) with the pipelines of the
daemon's own jobs (storage/imaging.py: copy, gzip, gunzip; holes kept, O_DIRECT into a plain
DST, an encrypted drive decrypted or encrypted with its key, DST fdatasynced before the end),
so the bytes never leave the host.

The job runs blocking in a thread of its own (`run`); whoever follows it reads `done` and
`total` as the pipeline's tracker reports them, and `stop` ends it at its next tick."""

import threading

from openhosting.errors import MissingError
from openhosting.storage.drive_transfers import storage_error
from openhosting.storage.imaging import PIPELINES, Endpoint, Tracker
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.storage.storage_calls import ImageCall


class HostImaging:
    """The job `call` on the files of `storage`."""

    def __init__(self, storage: LocalDriveStorage, call: ImageCall) -> None:
        self._storage, self.call = storage, call
        self._stop = threading.Event()
        self.done = self.total = 0  # SRC's bytes, as the tracker last reported them

    def check(self) -> None:
        """MissingError unless both drives have their file here (before anything begins)."""
        call = self.call
        for drive, tier in ((call.source, call.source_tier), (call.drive, call.tier)):
            if not self._storage.is_available(drive, tier):
                raise MissingError(f"Drive {drive} has no file on this host")

    def run(self) -> int:
        """Fill DST from SRC (blocking); SRC's bytes processed, once DST is durable.

        ImagingStopped once stopped; GzipStreamError when a gunzip's SRC holds no whole gzip
        stream; FullError when the disk is full; another OSError as it comes."""
        call = self.call
        tracker = Tracker(self._progress, stop=self._stop, max_rate=call.max_rate)
        src_files = self._storage.files_of(call.source, call.source_tier)
        dst_files = self._storage.files_of(call.drive, call.tier)
        try:
            with (
                src_files.open(call.source, call.source_key) as src_io,
                dst_files.open(call.drive, call.master_key) as dst_io,
            ):
                PIPELINES[call.conversion](
                    Endpoint.of(src_io, call.source_size), Endpoint.of(dst_io, call.size), tracker
                )
        except OSError as error:
            raise storage_error(error, "image the drive") from None
        return tracker.total

    def stop(self) -> None:
        """End the job at its next tick (ImagingStopped from `run`)."""
        self._stop.set()

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
