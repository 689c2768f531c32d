"""`openhostingd`: the platform daemon. Serves the API in the foreground until SIGTERM/SIGINT."""

import argparse
import asyncio
import faulthandler
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from openhosting.api.access_log import SERVER_LOG, RequestLogger
from openhosting.api.app import RUNNER_OPTIONS, build_app
from openhosting.api.context import BODY_READERS_KEY, READINESS_KEY
from openhosting.api.handlers import HANDLERS
from openhosting.api.ops import build_ops_app
from openhosting.api.runner import ApiRunner
from openhosting.config import Config, ConfigError, load_config
from openhosting.errors import ApiError
from openhosting.hypervisor.agent_connector import agent_connector, storage_connector
from openhosting.logs import FORMATS, configure_logging
from openhosting.memory import limit_malloc_arenas
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.drives.drive_orphans import DriveOrphans
from openhosting.services.platform import Platform, open_platform
from openhosting.store.database import open_pool

log = logging.getLogger("openhosting.daemon")
MAX_PORT = 65535


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    # A port past 65535 reached bind() and stopped the daemon with a traceback.
    if not host or not port.isdigit() or int(port) > MAX_PORT:
        raise ConfigError(
            f"Invalid listen address {listen!r}: expected HOST:PORT, PORT at most {MAX_PORT}"
        )
    return host.strip("[]"), int(port)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The API's TLS context from api.tls_cert and api.tls_key (None without a certificate);
    ConfigError naming them if they cannot be loaded (a missing file said only 'No such file
    or directory', after the platform had opened)."""
    if not config.api.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.api.tls_cert, config.api.tls_key or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"Cannot load api.tls_cert {config.api.tls_cert!r} (api.tls_key"
            f" {config.api.tls_key!r}): {getattr(error, 'strerror', None) or error}"
        ) from None
    return context


def public_url(config: Config) -> str:
    if config.api.public_url:
        return config.api.public_url
    host, port = parse_listen(config.api.listen)
    scheme = "https" if config.api.tls_cert else "http"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}/"


def first_user_message(config: Config, key: NewKey) -> str:
    """What to paste into a shell to use the API as the new user `key`."""
    return (
        "A first user was created. Use the API with:\n"
        f"export OHURI={public_url(config)}\n"
        f"export OHAUTH={key.uuid}:{key.secret}\n"
    )


def announce_first_user(platform: Platform) -> None:
    """On a platform with no users yet, create one and print how to reach the API with it.

    Printed to standard output only, never logged: the secret is shown this once.
    """
    if not platform.config.first_user or platform.accounts.has_users():
        return
    key = platform.accounts.create_user("first user")
    log.info("event=first_user_created user=%s", key.uuid)
    print(first_user_message(platform.config, key), flush=True)


async def _listen(site: web.TCPSite, address: str, setting: str) -> None:
    """Start `site`; a bind that fails names the setting that chose its address."""
    try:
        await site.start()
    except OSError as error:
        raise OSError(
            error.errno, f"cannot listen on {address} ({setting}): {error.strerror or error}"
        ) from error


# How long a stop lets the requests under way finish (a drive read to a slow client, say),
# after which they are cut: the client sees its body end short of its Content-Length. aiohttp's
# default, 60 s, is the unit's TimeoutStopSec: a stop held by one slow download was SIGKILLed
# before its clean-up (the imaging jobs' and VMs' hand-over), and a restart kept the API down
# that long. aiohttp waits up to this twice: for the handlers, then for their cancellation.
STOP_DRAIN_SECONDS = 10.0


async def serve(
    platform: Platform,
    ready: asyncio.Event | None = None,
    listening: Callable[[], None] | None = None,
) -> None:
    """Serve the API until SIGTERM or SIGINT; `listening` is called once both listeners are
    bound, before any request is served."""
    config = platform.config
    host, port = parse_listen(config.api.listen)
    app = build_app(platform, HANDLERS)
    runner = ApiRunner(
        app,
        access_log_class=RequestLogger,
        handle_signals=False,
        # Also closes a connection that never completes its first request (slow loris).
        keepalive_timeout=config.api.idle_timeout,
        shutdown_timeout=STOP_DRAIN_SECONDS,
        **RUNNER_OPTIONS,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls_context(config), reuse_address=True)
    ops_runner = web.AppRunner(
        build_ops_app(app), handle_signals=False, access_log=None, logger=SERVER_LOG
    )
    await ops_runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    open_pool(platform.engine)  # its descriptors from the start, not with the first peak
    # Drive files first: a resize the previous daemon did not finish is put right before any
    # server or job opens them.
    await asyncio.to_thread(platform.drives.repair_files, config.storage.orphan_grace_seconds)
    await asyncio.to_thread(platform.hosts.register)
    lifecycle = platform.servers.lifecycle
    lifecycle.drivers.connector = agent_connector(config.state_path)  # hosts with agents
    platform.drives.storages.connector = storage_connector(config.state_path)  # their drives
    heartbeat = asyncio.create_task(platform.hosts.heartbeat_every(lifecycle.agent_reports))
    orphans = DriveOrphans(
        platform.engine,
        platform.drives.storages,
        lifecycle.operations,
        grace=config.storage.orphan_grace_seconds,
        interval=max(1, config.storage.orphan_check_seconds),
        hosts_up=lifecycle.agents_up,
        copies=lifecycle.copies,
    )
    lifecycle.agent_listeners.append(orphans.wake)  # an agent (re)connected: its files
    orphan_files = asyncio.create_task(orphans.run())
    # Connects to the hosts' agents, whose hosts are online at once with what they report
    # (placement takes only those), then watched.
    await platform.servers.recover()
    agents = asyncio.create_task(
        lifecycle.watch_agents_every(max(1, config.host.heartbeat_seconds))
    )
    metering = asyncio.create_task(platform.billing.run()) if config.billing.enabled else None
    log_pruning = asyncio.create_task(platform.servers.lifecycle.logs.prune_hourly())
    guest_io = asyncio.create_task(platform.servers.lifecycle.fold_guest_io_every())
    nic_helpers = asyncio.create_task(platform.servers.networks.keep_helpers_running_every())
    await platform.imaging.start()  # jobs a previous daemon left unfinished start again
    listener = platform.listen()  # PostgreSQL: other nodes' writes and queued jobs
    platform.drives.tiers.watch()  # drives' availability kept between changes of their files
    try:
        if config.api.metrics_listen:
            ops_host, ops_port = parse_listen(config.api.metrics_listen)
            await _listen(
                web.TCPSite(ops_runner, ops_host, ops_port, reuse_address=True),
                config.api.metrics_listen,
                "api.metrics_listen, OH_API_METRICS_LISTEN; empty turns it off",
            )
            log.info("event=metrics_listening address=%s", config.api.metrics_listen)
        await _listen(site, config.api.listen, "api.listen, OH_API_LISTEN or --listen")
        log.info("event=listening url=%s state_dir=%s", public_url(config), config.state_dir)
        if listening is not None:
            listening()
        app[READINESS_KEY].set()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("event=stopping")
    finally:
        app[READINESS_KEY].clear()
        platform.events.close()  # event streams end, so the runner need not wait for them
        app[BODY_READERS_KEY].stop()  # bodies not yet whole: the runner drops the rest
        await runner.cleanup()
        await ops_runner.cleanup()
        await platform.imaging.stop()  # interrupted jobs start again on the next start
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        if metering is not None:
            metering.cancel()
        log_pruning.cancel()
        guest_io.cancel()
        nic_helpers.cancel()
        heartbeat.cancel()
        agents.cancel()
        orphan_files.cancel()
        # No beat, adoption or removal after the stop.
        await asyncio.gather(heartbeat, agents, orphan_files, return_exceptions=True)
        await platform.servers.close()  # VMs keep running; the next daemon adopts them
        await platform.drives.storages.close()
        log.info("event=stopped")


def main(argv: list[str] | None = None) -> int:
    # A fatal signal (SIGBUS, SIGSEGV, ...) ends the process before any logging runs: the
    # stack of each thread goes to standard error (the log, the journal) instead of nothing.
    faulthandler.enable(all_threads=True)
    parser = argparse.ArgumentParser(prog="openhostingd", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--state-dir", help="directory holding the platform's state")
    parser.add_argument("--listen", help="HOST:PORT to serve the API on")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if args.listen:
        overrides["api"] = {"listen": args.listen}
    try:
        config = load_config(args.config, overrides=overrides)
        parse_listen(config.api.listen)
        if config.api.metrics_listen:
            parse_listen(config.api.metrics_listen)
        if config.log_format not in FORMATS:
            raise ConfigError(f"Invalid log_format {config.log_format!r}: text or json")
        tls_context(config)  # checked before the platform opens
    except ConfigError as error:
        print(f"openhostingd: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    limit_malloc_arenas()
    try:
        platform = open_platform(config)
    except ConfigError as error:  # e.g. network settings only checked when opened
        print(f"openhostingd: {error}", file=sys.stderr)
        return 2
    except ApiError as error:  # the state's disk full, a database of a newer version
        log.error("event=start_failed reason=%s error=%r", error.kind, error.message)
        print(f"openhostingd: {error.message}", file=sys.stderr)
        return 1
    try:
        # The first user and its export lines only once the API listens: a daemon that
        # cannot bind (the port taken) would print lines naming someone else's API, and its
        # next start, the user made, would print none. A few milliseconds on the loop, once,
        # before it serves anything.
        asyncio.run(serve(platform, listening=lambda: announce_first_user(platform)))
    except OSError as error:
        log.error("event=start_failed error=%s", error)
        return 1
    finally:
        platform.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
