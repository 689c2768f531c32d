"""Whether anything was committed to a SQLite database in WAL mode, told by its WAL-index
header instead of a query.

`PRAGMA data_version` (asked per request, store/reader.py) is a statement that opens a read
transaction: two file-lock system calls and a VDBE run, about 5 µs. Every commit of any
connection of any process rewrites the WAL-index header at the start of the database's
`-shm` file (https://www.sqlite.org/walformat.html, "The WAL-Index Header": the change
counter, the last frame, its checksum and the salts), before the commit returns; reading its
first 96 bytes from a shared mapping costs a fraction of a µs and no system call.

The header is kept twice: a writer updates the second copy, then the first; a reader that
finds them equal has read one whole header (SQLite's own readers check the same way).

**No descriptor of the -shm file may be closed while SQLite has the database open in this
process.** Closing any descriptor of a file drops every POSIX lock the process holds on it,
SQLite's own among them: the read lock on the -shm file's "dead man switch" (byte 128) that
tells other processes the WAL-index is in use. Dropped, the next process to open the database
(the admin tool, a backup) finds it free, truncates the -shm file and builds it again, and
this process's connections, which map the old pages, die of SIGBUS (the crash campaign's
daemon did, silently, when the campaign's checker read its database: the first version of
this module closed its descriptor once mapped). So a -shm file is opened once per process,
by the first engine that asks (`of_engine`), shared by every engine on the same file, and
its descriptors (ours and the duplicate Python's mmap keeps) are closed only when the last of
those engines is disposed, its connections closed first (SQLAlchemy's `engine_disposed`
comes after the pool's). Never opened again to look at it: its device and inode are read by
path.

While mapped, the -shm file cannot be truncated under us (this process's connections hold
the dead man switch) nor deleted (SQLite deletes it when the last connection of any process
closes, and the engine's Reader keeps one open until the engine is disposed).
"""

import mmap
import os
import threading
import weakref
from pathlib import Path

from sqlalchemy import Engine, event

HEADER_BYTES = 48  # one copy of the WAL-index header
IS_INIT = 12  # the offset of its isInit byte: 1 once a connection has set the header up


class WalIndex:
    """A read-only view of one database's WAL-index header, holding its -shm file open."""

    def __init__(self, descriptor: int) -> None:
        """Over `descriptor`, an open -shm file, which it keeps (see the module); unusable
        when the file is too small to hold a header (not in WAL mode, or not set up yet)."""
        self._descriptor = descriptor
        self._map: mmap.mmap | None = None
        if os.fstat(descriptor).st_size >= 2 * HEADER_BYTES:
            self._map = mmap.mmap(descriptor, 2 * HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)

    @property
    def usable(self) -> bool:
        return self._map is not None

    def header(self) -> bytes | None:
        """The header as it is now; None while a writer is between its two copies (or the
        file is not set up), when nothing can be told."""
        mapped = self._map
        if mapped is None:
            return None
        first = mapped[:HEADER_BYTES]
        if first[IS_INIT] != 1 or mapped[HEADER_BYTES : 2 * HEADER_BYTES] != first:
            return None
        return first

    def close(self) -> None:
        """Only once no connection of this process has the database open (see the module)."""
        if self._map is not None:
            self._map.close()
        os.close(self._descriptor)


class _Shared:
    """One -shm file's WalIndex and how many engines use it."""

    __slots__ = ("index", "users")

    def __init__(self, index: WalIndex) -> None:
        self.index = index
        self.users = 0


_lock = threading.Lock()
_by_file: dict[tuple[int, int], _Shared] = {}  # by the -shm file's device and inode
_of_engine: "weakref.WeakKeyDictionary[Engine, tuple[int, int]]" = weakref.WeakKeyDictionary()


def of_engine(engine: Engine, database: Path) -> WalIndex | None:
    """The WAL-index of `database`, which `engine` (in WAL mode, with a connection open on
    it now) uses; None when it cannot be read. Held until the engine is disposed."""
    shm_path = f"{database}-shm"
    with _lock:
        file = _of_engine.get(engine)
        if file is None:
            try:
                status = os.stat(shm_path)
            except OSError:
                return None
            file = (status.st_dev, status.st_ino)
            if file not in _by_file:
                try:
                    descriptor = os.open(shm_path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
                _by_file[file] = _Shared(WalIndex(descriptor))
            _by_file[file].users += 1
            _of_engine[engine] = file
            event.listen(engine, "engine_disposed", _released, once=True)
        index = _by_file[file].index
        return index if index.usable else None


def _released(engine: Engine) -> None:
    """`engine` was disposed, its pooled connections closed: its hold on the file ends, and
    with the last engine's the file is closed."""
    with _lock:
        file = _of_engine.pop(engine, None)
        if file is None or (shared := _by_file.get(file)) is None:
            return
        shared.users -= 1
        if shared.users == 0:
            del _by_file[file]
            shared.index.close()
