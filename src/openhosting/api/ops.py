"""The operator's listener, apart from the API: `/metrics` for Prometheus, `/health` (the
daemon answers) and `/ready` (it has adopted its VMs, serves the API and reaches its
database). No authentication: it is meant for the provider's monitoring network only, and
listens on loopback by default (`api.metrics_listen`).

`POST /host/suspend` and `/host/resume` are how `openhosting-admin host …` has the running
daemon dump and restore every server (the daemon holds each VM's only QMP connection), and
`POST /host/drain/NAME` move every server of host NAME to other hosts (it holds the agents'
connections). They
change state, so they answer only callers on this host's loopback, wherever it listens."""

import asyncio
import ipaddress
import urllib.parse

from aiohttp import web
from sqlalchemy import text

from openhosting.api.context import METRICS_KEY, PLATFORM_KEY, READINESS_KEY, TRANSFER_LIMITER_KEY
from openhosting.api.metrics import CONTENT_TYPE
from openhosting.errors import MissingError
from openhosting.services.platform_state import read_platform_state

API_APP_KEY: web.AppKey[web.Application] = web.AppKey("api_app", web.Application)
# The state directory (absolute, percent-encoded) of the platform the admin tool means: the
# daemon of another platform of the host, on the metrics address the tool was given, refuses
# with 409 rather than dump, restore or move servers that are not the ones meant.
STATE_DIR_HEADER = "X-Openhosting-State-Dir"


async def metrics(request: web.Request) -> web.Response:
    api = request.app[API_APP_KEY]
    platform = api[PLATFORM_KEY]
    state = await asyncio.to_thread(
        read_platform_state,
        platform.engine,
        platform.servers.lifecycle.statuses(),
        platform.config.tier_paths,
        platform.config.hypervisor.core_mhz,
    )
    body = api[METRICS_KEY].render(
        state, api[TRANSFER_LIMITER_KEY].under_way, platform.events.subscribers()
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def ready(request: web.Request) -> web.Response:
    api = request.app[API_APP_KEY]
    if not api[READINESS_KEY].is_set():
        return web.Response(status=503, text="starting\n")
    try:
        await asyncio.to_thread(_ping, api)
    except Exception as error:  # any failure to reach the database means not ready
        return web.Response(status=503, text=f"database unreachable: {type(error).__name__}\n")
    return web.Response(text="ready\n")


def _ping(api: web.Application) -> None:
    with api[PLATFORM_KEY].engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def host_suspend(request: web.Request) -> web.Response:
    _local_only(request)
    _this_platform(request)
    outcome = await request.app[API_APP_KEY][PLATFORM_KEY].servers.suspend_all()
    return web.Response(text=_outcome_text(outcome))


async def host_resume(request: web.Request) -> web.Response:
    _local_only(request)
    _this_platform(request)
    outcome = await request.app[API_APP_KEY][PLATFORM_KEY].servers.resume_all()
    return web.Response(text=_outcome_text(outcome))


async def host_drain(request: web.Request) -> web.Response:
    _local_only(request)
    _this_platform(request)
    try:
        outcome = await request.app[API_APP_KEY][PLATFORM_KEY].servers.drain(
            request.match_info["name"]
        )
    except MissingError as error:
        return web.Response(status=404, text=f"{error.message}\n")
    return web.Response(text=_outcome_text(outcome))


def _this_platform(request: web.Request) -> None:
    """409 unless the caller means this daemon's platform (a caller that does not say, as the
    tool before the header, is taken at its word)."""
    meant = request.headers.get(STATE_DIR_HEADER)
    if meant is None:
        return
    ours = request.app[API_APP_KEY][PLATFORM_KEY].config.state_path.resolve()
    if urllib.parse.unquote(meant) != str(ours):
        raise web.HTTPConflict(
            text=f"this openhostingd serves the platform in {ours}, not the one in"
            f" {urllib.parse.unquote(meant)}\n"
        )


def _local_only(request: web.Request) -> None:
    try:
        local = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        local = False
    if not local:
        raise web.HTTPForbidden(text="host maintenance is for callers on this host only\n")


def _outcome_text(outcome: dict[str, str]) -> str:
    """One line per server: its id, then `dumped`/`active` or why not."""
    return "".join(f"{uuid} {' '.join(text.split())}\n" for uuid, text in outcome.items())


def build_ops_app(api: web.Application) -> web.Application:
    """The operator's application over the API application `api` (its platform, metrics)."""
    app = web.Application()
    app[API_APP_KEY] = api
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/host/suspend", host_suspend)
    app.router.add_post("/host/resume", host_resume)
    app.router.add_post("/host/drain/{name}", host_drain)
    return app
