"""Where database work runs, so that the event loop never waits on the network.

SQLite is a local file: a query costs microseconds, and the services have always called it
from the event loop, one at a time, which also serialises their read-check-write sequences
within the process. That stays so: on SQLite `run` calls the work at once.

PostgreSQL is across a network and other nodes hold locks: a query may wait for as long as
they do. There `run` hands the work to a bounded pool of worker threads, as many as the
engine keeps connections, and the event loop goes on serving while it waits.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine

from openhosting.store.database import POOL_SIZE, is_sqlite

P = ParamSpec("P")
T = TypeVar("T")


class StoreExecutor:
    """Runs a blocking function that uses the database: inline on SQLite, in a worker thread
    otherwise."""

    def __init__(self, engine: Engine) -> None:
        self._threads = (
            None
            if is_sqlite(engine)
            else ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="store")
        )

    @property
    def off_loop(self) -> bool:
        """Whether work runs in worker threads (the database is not a local file)."""
        return self._threads is not None

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(*args, **kwargs)`, without holding up the event loop on a remote database."""
        if self._threads is None:
            return work(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(work, *args, **kwargs))

    def close(self) -> None:
        """Wait for the work under way, then end the threads."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
