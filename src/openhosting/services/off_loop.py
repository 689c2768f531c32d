"""Building big answers away from the event loop.

A listing's info of thousands of objects (`drives/info` of 10,000 drives: ~0.3 s of queries,
records and dicts) would hold every other request, `/health` included, for as long as it is
built. Small ones stay on the loop: a worker thread's hand-off costs more than they do.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy import Connection, Engine

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


def in_worker_thread() -> bool:
    """Whether this code runs outside the event loop's thread (no loop runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


@contextlib.contextmanager
def worker_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for building an answer. In a worker thread on SQLite it is closed at the
    end instead of going back to the pool: the pool would otherwise keep one per thread that
    ever built a big answer, three file descriptors each (database, WAL, index), and the
    daemon's descriptors would grow with the load instead of staying level."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite" and in_worker_thread():
            connection.detach()
        yield connection
