"""The web console's page: our own small page (api/console_page/) that loads noVNC's `RFB`
module and opens `/console/websocket` with the token in its address, and noVNC's files.

noVNC is not in the repository: it is Debian's `novnc` package, read from
`api.console_novnc_dir`. Only its JavaScript modules under `core/` and `vendor/` are served,
read-only: no directory listing, no path out of those folders (`..`, symlinks), no other
file of the package. Loading the page does not use the token up; its WebSocket does.
"""

from pathlib import Path, PurePosixPath

from aiohttp import web

from openhosting.api.context import platform_of
from openhosting.errors import MethodError, MissingError

PAGE_DIR = Path(__file__).resolve().parent.parent / "console_page"
# Our own files, by the name they are asked for: nothing else of PAGE_DIR is served.
ASSETS = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
NOVNC_FOLDERS = ("core", "vendor")

# The page runs only its own scripts, talks only to its daemon, in no frame. A token is in the
# page's address: no Referer may carry it anywhere.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# noVNC changes only with the Debian package: browsers may keep it a day.
NOVNC_CACHE = "public, max-age=86400"


def _only_get(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise MethodError(f"{request.method} is not allowed on {request.path}: use GET")


def _file(path: Path, content_type: str, cache: str) -> web.FileResponse:
    response = web.FileResponse(path)
    response.content_type = content_type
    response.headers.update(PAGE_HEADERS)
    response.headers["Cache-Control"] = cache
    return response


async def page(request: web.Request) -> web.StreamResponse:
    """The console page. It does not look at the token: its script does, once loaded."""
    _only_get(request)
    response = _file(PAGE_DIR / "index.html", "text/html", "no-store")
    response.charset = "utf-8"
    return response


async def asset(request: web.Request) -> web.StreamResponse:
    """The page's own script and style sheet."""
    _only_get(request)
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise MissingError(f"Command {request.path} could not be found")
    return _file(PAGE_DIR / name, content_type, "no-cache")


def novnc_path(root: Path, asked: str) -> Path | None:
    """The file of noVNC's `root` that `asked` (a path below /console/novnc/) names, or None
    if it names nothing we serve: a JavaScript module in `core/` or `vendor/`, reached without
    `..`, hidden names or a symlink out of `root`."""
    parts = PurePosixPath(asked).parts
    if (
        len(parts) < 2
        or parts[0] not in NOVNC_FOLDERS
        or not asked.endswith(".js")
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
        or "\\" in asked
        or "\0" in asked
    ):
        return None
    base = root.resolve()
    target = (base / asked).resolve()
    if not target.is_relative_to(base / parts[0]) or not target.is_file():
        return None
    return target


async def novnc_file(request: web.Request) -> web.StreamResponse:
    """One of noVNC's JavaScript modules, from Debian's package."""
    _only_get(request)
    root = Path(platform_of(request).config.api.console_novnc_dir)
    target = novnc_path(root, request.match_info["path"])
    if target is None:
        raise MissingError(f"Command {request.path} could not be found")
    return _file(target, "text/javascript", NOVNC_CACHE)
