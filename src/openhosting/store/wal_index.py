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

The mapping is safe while the caller's own SQLite connection to the database stays open in
WAL mode: SQLite truncates a `-shm` file only when it opens one that no connection of any
process holds (its "dead man switch" lock), so the mapped page never goes away under us.
"""

import mmap
import os
from pathlib import Path

HEADER_BYTES = 48  # one copy of the WAL-index header
IS_INIT = 12  # the offset of its isInit byte: 1 once a connection has set the header up


class WalIndex:
    """A read-only view of one database's WAL-index header."""

    def __init__(self, database: Path) -> None:
        """OSError if `database` has no `-shm` file large enough (not in WAL mode, or not
        yet opened by a connection)."""
        descriptor = os.open(f"{database}-shm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(descriptor).st_size < 2 * HEADER_BYTES:
                raise OSError(f"{database}-shm holds no WAL-index header")
            self._map = mmap.mmap(descriptor, 2 * HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(descriptor)  # the mapping keeps the file

    def header(self) -> bytes | None:
        """The header as it is now; None while a writer is between its two copies (or the
        file is not set up), when nothing can be told."""
        first = self._map[:HEADER_BYTES]
        second = self._map[HEADER_BYTES : 2 * HEADER_BYTES]
        if first != second or first[IS_INIT] != 1:
            return None
        return first

    def close(self) -> None:
        self._map.close()
