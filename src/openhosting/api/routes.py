"""The URL space of the API (docs/api.md §4–6): every command, whether it reads or changes state,
and the handler that serves it.

POST works on every command; GET (and HEAD) only on those that read. Commands that a later
part of the platform implements answer 404 `missing` until then.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from openhosting.errors import MissingError
from openhosting.wire.payload import Payload

HandlerResult = Payload | web.StreamResponse | None
Handler = Callable[[web.Request], Awaitable[HandlerResult]]

UUID = r"{%s:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}}"
DRIVE = UUID % "drive"
SERVER = UUID % "server"
SOURCE = UUID % "source"
SIZE = r"[0-9]+[kKmMgGtT]?"


class Kind(Enum):
    READ = "read"
    CHANGE = "change"


@dataclass(frozen=True)
class Route:
    path: str
    kind: Kind
    command: str  # the handler's name in the handler table
    # False: no Basic authentication; the handler authenticates the request by other means
    # (a browser cannot send Basic credentials on a WebSocket: the console's token).
    basic_auth: bool = True


ROUTES: tuple[Route, ...] = (
    # Drives (docs/api.md §4)
    Route("/drives/list", Kind.READ, "drives.list"),
    Route("/drives/info", Kind.READ, "drives.info_all"),
    Route("/drives/info/full", Kind.READ, "drives.info_all"),
    Route("/drives/list/standard", Kind.READ, "drives.list_standard"),
    Route("/drives/info/standard", Kind.READ, "drives.info_standard"),
    Route("/drives/create", Kind.CHANGE, "drives.create"),
    Route(f"/drives/{DRIVE}/info", Kind.READ, "drives.info"),
    Route(f"/drives/{DRIVE}/info/full", Kind.READ, "drives.info"),
    Route(f"/drives/{DRIVE}/set", Kind.CHANGE, "drives.set"),
    Route(f"/drives/{DRIVE}/destroy", Kind.CHANGE, "drives.destroy"),
    Route(f"/drives/{DRIVE}/image/{SOURCE}", Kind.CHANGE, "drives.image"),
    Route(f"/drives/{DRIVE}/image/{SOURCE}/{{conversion}}", Kind.CHANGE, "drives.image"),
    Route(f"/drives/{DRIVE}/read", Kind.READ, "drives.read"),
    Route(f"/drives/{DRIVE}/read/{{offset:{SIZE}}}", Kind.READ, "drives.read"),
    Route(f"/drives/{DRIVE}/read/{{offset:{SIZE}}}/{{size:{SIZE}}}", Kind.READ, "drives.read"),
    # Our extension: the SHA-256 of a range. OFFSET and SIZE match any segment, so that a bad
    # one is a 400 naming it rather than an unknown command.
    Route(f"/drives/{DRIVE}/hash", Kind.READ, "drives.hash"),
    Route(f"/drives/{DRIVE}/hash/{{offset}}", Kind.READ, "drives.hash"),
    Route(f"/drives/{DRIVE}/hash/{{offset}}/{{size}}", Kind.READ, "drives.hash"),
    Route(f"/drives/{DRIVE}/write", Kind.CHANGE, "drives.write"),
    Route(f"/drives/{DRIVE}/write/{{offset:{SIZE}}}", Kind.CHANGE, "drives.write"),
    # Servers (docs/api.md §5)
    Route("/servers/list", Kind.READ, "servers.list"),
    Route("/servers/info", Kind.READ, "servers.info_all"),
    Route("/servers/create", Kind.CHANGE, "servers.create"),
    Route("/servers/create/stopped", Kind.CHANGE, "servers.create_stopped"),
    Route(f"/servers/{SERVER}/info", Kind.READ, "servers.info"),
    Route(f"/servers/{SERVER}/start", Kind.CHANGE, "servers.start"),
    Route(f"/servers/{SERVER}/set", Kind.CHANGE, "servers.set"),
    Route(f"/servers/{SERVER}/stop", Kind.CHANGE, "servers.stop"),
    Route(f"/servers/{SERVER}/shutdown", Kind.CHANGE, "servers.shutdown"),
    Route(f"/servers/{SERVER}/reset", Kind.CHANGE, "servers.reset"),
    Route(f"/servers/{SERVER}/destroy", Kind.CHANGE, "servers.destroy"),
    # Our extension: what the server printed on its serial port (the last of it).
    Route(f"/servers/{SERVER}/log", Kind.READ, "servers.log"),
    # Our extension: the web console. A token for one server's console, then the WebSocket
    # that uses it (the token alone authenticates it), the page that opens it, the page's
    # script and style, and noVNC's modules (public files: no authentication).
    Route(f"/servers/{SERVER}/console", Kind.CHANGE, "servers.console"),
    Route("/console/websocket", Kind.READ, "console.websocket", basic_auth=False),
    Route("/console/", Kind.READ, "console.page", basic_auth=False),
    Route("/console/novnc/{path:.+}", Kind.READ, "console.novnc", basic_auth=False),
    Route("/console/{asset}", Kind.READ, "console.asset", basic_auth=False),
    # The caller's own account: balance, limits, usage (docs/api.md §7)
    Route("/account/info", Kind.READ, "account.info"),
    # Its metered usage per day (UTC), for the dashboard's chart (an extension)
    Route("/account/usage", Kind.READ, "account.usage"),
    # The caller's state changes as they happen (server-sent events; an extension)
    Route("/events", Kind.READ, "events.stream"),
    # Resources (docs/api.md §6)
    Route("/resources/list", Kind.READ, "resources.list"),
    Route("/resources/info", Kind.READ, "resources.info_all"),
    Route("/resources/{type}/list", Kind.READ, "resources.list"),
    Route("/resources/{type}/info", Kind.READ, "resources.info_all"),
    Route("/resources/{type}/create", Kind.CHANGE, "resources.create"),
    Route("/resources/{type}/{resource}/info", Kind.READ, "resources.info"),
    Route("/resources/{type}/{resource}/set", Kind.CHANGE, "resources.set"),
    Route("/resources/{type}/{resource}/destroy", Kind.CHANGE, "resources.destroy"),
)


async def unavailable(request: web.Request) -> HandlerResult:
    """The answer of a command this platform does not offer yet."""
    raise MissingError(f"Command {request.path} could not be found on this platform yet")


def canonical_path(path: str) -> str:
    """`path` as aiohttp names its resource (`resource.canonical`): each `{name:pattern}`
    written `{name}` (patterns may hold braces of their own)."""
    kept, depth, in_pattern = [], 0, False
    for char in path:
        if char == "{":
            depth += 1
            if depth > 1:
                continue
        elif char == "}":
            depth -= 1
            if depth > 0:
                continue
            in_pattern = False
        elif char == ":" and depth == 1:
            in_pattern = True
        if not in_pattern:
            kept.append(char)
    return "".join(kept)
