"""Whether anything has happened to a directory's entries since a moment: an inotify watch
read by the event loop, so that what was learnt by looking at its files (a drive's
availability) is kept until one of them changes, as the Reader keeps reads until a commit.

The kernel queues an event as the change is made (a rename, a delete, a new file, the
directory itself moved or its file system unmounted); the event loop reads it at its next
look at its descriptors, before it handles any request that arrived after the change.
Nothing is trusted once the watch is lost (the kernel's queue overflowed, the directory gone)
or off its own event loop: callers then look every time. Writes to a file are no event here
(IN_MODIFY is not asked): drive I/O never empties what is kept.
"""

import asyncio
import ctypes
import logging
import os
import struct
import weakref
from pathlib import Path

log = logging.getLogger("openhosting.storage")

# <sys/inotify.h>
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What changes which files a directory holds, or whether they open.
ENTRY_EVENTS = (
    IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_UNMOUNT
)
# After these the watch tells nothing more.
LOST_EVENTS = IN_Q_OVERFLOW | IN_IGNORED | IN_UNMOUNT | IN_DELETE_SELF | IN_MOVE_SELF

EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


class DirectoryWatch:
    """An inotify watch on one directory, read by the running event loop."""

    def __init__(self, directory: Path) -> None:
        """Watch `directory` from the running event loop (OSError if inotify refuses)."""
        self.loop = asyncio.get_running_loop()
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _os_error(str(directory))
        if _libc.inotify_add_watch(fd, os.fsencode(directory), ENTRY_EVENTS) < 0:
            error = _os_error(str(directory))
            os.close(fd)
            raise error
        self._fd: int | None = fd
        # Closes it also when the watch is dropped unclosed (its event loop closed first).
        self._closer = weakref.finalize(self, os.close, fd)
        self.lost = False
        # Counts the reads that found events: what was learnt while it had one value is
        # still true while it keeps it.
        self.heard = 0
        self.loop.add_reader(fd, self._read)

    @property
    def live(self) -> bool:
        """Whether `heard` tells every change now: the watch holds, and the caller runs on
        its event loop (which has read every event queued before the caller's turn)."""
        return not self.lost and asyncio._get_running_loop() is self.loop

    def _read(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            log.warning("event=directory_watch_lost error=%r", error)
            self._lose()
            return
        self.heard += 1
        offset = 0
        while offset + EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size + length
            if mask & LOST_EVENTS:
                self._lose()
                return

    def _lose(self) -> None:
        self.lost = True
        self.close()

    def close(self) -> None:
        """Stop watching (nothing is trusted after)."""
        self.lost = True
        if self._fd is None:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        self._fd = None
        self._closer()


def _os_error(what: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, os.strerror(number), what)
