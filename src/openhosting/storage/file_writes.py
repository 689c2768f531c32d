"""Whole positioned writes: `pwrite` again until all of the data is in the file."""

import os


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    """Write all of `data` at `position` of `fd`, however short each `pwrite` comes back.

    Each rest of `data` handed to a `pwrite` is let go of once written or refused: a failed
    write's traceback keeps this frame, and a rest held there keeps `data`'s exporter
    exported. A map could then not close (BufferError, which hid the write's own error: a
    disk full after a short write became an internal error), nor a bytearray change size."""
    view = memoryview(data)
    try:
        done = 0
        while done < len(view):
            with view[done:] as rest:
                done += os.pwrite(fd, rest, position + done)
    finally:
        view.release()
