"""The worker threads of drive transfers whose one call may run for long: the hash of a range
(about a second per GiB, hours for a large drive) and a gzip body's inflating and applying
(as long as what it inflates to).

Not the event loop's default executor: that one has a few threads (cpu count + 4) for every
short blocking call of the daemon (a drive's file made, a log read, a server's start), and a
user's few hashes of a large drive, each within the transfer limits, held all of them, so
every other user's drive creates and writes waited hours behind them.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# As many as the transfers a host lets run at once by default (`api.max_transfers`): below
# that, transfers never wait for each other's threads; a host configured for more lets the
# rest wait their turn here, never for the daemon's other work. Threads are made on demand.
TRANSFER_THREADS = 64

_EXECUTOR = ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="transfer")


def in_transfer_thread(function: Callable[..., T], *args: object) -> "asyncio.Future[T]":
    """`function(*args)` in a transfer thread, as a future of the running loop."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(_EXECUTOR, functools.partial(function, *args))
