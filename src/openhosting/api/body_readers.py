"""The request bodies being read, ended at once when the daemon stops.

At a stop aiohttp closes its connections: whatever a client still sends of a body is dropped
unread. A drive write whose body was not whole then waited for the idle timeout, was refused
as stalled (400 `usage`, which tells the client it sent a bad request) and held the daemon's
stop that long (30 s by default, half of the unit's TimeoutStopSec). Each such body is ended
at the stop instead: its request answers 503 `failed` at once (nothing of it is acknowledged,
the client sends it again to the next daemon), and a body already whole is read to its end.
"""

import weakref

from aiohttp import web

from openhosting.errors import UnavailableError

STOPPING_MESSAGE = "The daemon is stopping: the request body was not taken, send it again"


class DaemonStopping(TimeoutError):
    """Set on a body's stream at the stop: its next read raises it. A TimeoutError (the body
    will not come in time), as aiohttp's lingering read of a body left unread after the
    answer takes it: it closes the connection, where any other error was logged as an
    unhandled exception with its traceback."""


class BodyReaders:
    """The requests whose body a handler is reading (weakly: a request answered goes)."""

    def __init__(self) -> None:
        self._requests: weakref.WeakValueDictionary[int, web.BaseRequest] = (
            weakref.WeakValueDictionary()
        )
        self.stopping = False

    def reading(self, request: web.BaseRequest) -> None:
        """Note that `request`'s body is being read; UnavailableError once stopping and the
        body is not whole."""
        if self.stopping and not request.content.is_eof():
            raise UnavailableError(STOPPING_MESSAGE)
        self._requests[id(request)] = request

    def stop(self) -> None:
        """End every body not yet whole: its reader raises DaemonStopping."""
        self.stopping = True
        for request in list(self._requests.values()):
            if not request.content.is_eof():
                request.content.set_exception(DaemonStopping())
