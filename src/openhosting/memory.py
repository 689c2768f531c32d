"""How the daemon's process keeps its memory flat.

Drive data goes through buffers of a few MiB (a piece read and decrypted, or encrypted and
written), made in worker threads. glibc gives each thread that allocates at once an arena of
its own (up to 8 per core), and an arena keeps what was freed in it: with several decrypting
threads, a 2 GiB encrypted read left the daemon ~90 MB larger than a plain one, about the
bound on its resident memory while streaming (tests/integration/test_drive_streaming.py).
Two arenas keep the figure near the plain one (~145 MB at peak) at no cost in speed (the
read bench within its noise); a fixed mmap threshold also bounds it but costs ~40 % of the
encrypted read's speed in page faults.
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt's parameter number for the number of arenas (malloc.h).
M_ARENA_MAX = -8
ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Hold glibc to two arenas (True), or leave it (False: not glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        done = bool(libc.mallopt(M_ARENA_MAX, ARENAS))
    except (OSError, AttributeError):
        return False
    if not done:
        log.warning("event=mallopt_failed parameter=M_ARENA_MAX")
    return done
