"""Building big answers away from the event loop.

A listing's info of thousands of objects (`drives/info` of 10,000 drives: ~0.3 s of queries,
records and dicts) would hold every other request, `/health` included, for as long as it is
built. Small ones stay on the loop: a worker thread's hand-off costs more than they do.
"""

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Above this many objects an answer is built (and rendered, api/app.py) in a worker thread.
INLINE_ITEMS = 64


async def built_off_loop(count: int | None, build: Callable[[], T]) -> T:
    """What `build` gives, made on the loop for `count` up to INLINE_ITEMS objects, in a worker
    thread for more, or always (`count` None: a database across the network, whose every
    read is I/O). `build` must touch nothing that only the loop's thread may use (the
    Reader, the services' in-memory state): the engine, files and pure functions only."""
    if count is not None and count <= INLINE_ITEMS:
        return build()
    return await asyncio.to_thread(build)
