"""Building big answers away from the event loop.

A listing's info of thousands of objects (`drives/info` of 10,000 drives: ~0.3 s of queries,
records and dicts) would hold every other request, `/health` included, for as long as it is
built. Small ones stay on the loop: a worker thread's hand-off costs more than they do.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Above this many objects an answer is built (and rendered, api/app.py) in a worker thread.
INLINE_ITEMS = 64
# At most this many answers are built at once, each on one of the store's connections for the
# time: a bound the SQLite pool is sized for (store/database.py, SQLITE_POOL_SIZE). Building
# is mostly Python under the GIL: more threads than cores would not finish sooner.
BUILDERS = 4
_builders = ThreadPoolExecutor(BUILDERS, thread_name_prefix="build")


async def built_in_worker(build: Callable[[], T]) -> T:
    """What `build` gives, made in one of the BUILDERS threads. `build` must touch nothing
    that only the loop's thread may use (the loop's Reader, the services' in-memory state):
    the engine, a Reader of its own, files and pure functions only."""
    return await asyncio.get_running_loop().run_in_executor(_builders, build)


async def built_off_loop(count: int | None, build: Callable[[], T]) -> T:
    """What `build` gives, made on the loop for `count` up to INLINE_ITEMS objects, in a worker
    thread for more, or always (`count` None: a database across the network, whose every
    read is I/O)."""
    if count is not None and count <= INLINE_ITEMS:
        return build()
    return await built_in_worker(build)
