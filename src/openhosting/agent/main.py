"""`openhosting-agent`: the host agent, serving this host's hypervisor driver to the control
plane over mutual TLS (agent/server.py).

It reads the platform's configuration as the daemon does (`--config`, `OH_*`): the driver
(`hypervisor.driver`: `qemu`, or `fake` for tests), the run and state directories. Its TLS
bundle (`openhosting-admin host add NAME --out DIR` on the control plane's host, copied here)
is read from `--tls-dir`, by default `<state_dir>/agent-tls`.

It runs its host's network driver from the same configuration's `[network]`, as the daemon
does (user or bridge mode: this host's bridges, taps and DHCP server for the NICs of the VMs
that run here), started at the control plane's first NIC call.

Live migrations in and out of this host (QEMU) go over TLS with the same bundle, checked
against the cluster CA and, for a target, its host name; they listen on
`hypervisor.migration_address` (docs/cluster.md). So do the NBD exports of this host's drives
to the VMs of other hosts (one qemu-storage-daemon each, hypervisor/nbd_exports.py): only the
certificate of the host running the server may connect to one.
It also serves the bytes of the drives placed on this host, kept in its own drive directories
(`storage.tiers`, by default `<state_dir>/drives`); their reads and writes come on connections
of their own to the same port, each served by a thread (agent/drive_streams.py). Copies of
standard drives for this host's VMs are kept apart, in `<state_dir>/image-cache`
(agent/image_cache.py).

It logs as the daemon does (`log_level`, `log_format`: one `key=value` line or JSON object per
event on standard error, src/openhosting/logs.py), beginning with `event=agent_started`.

Once it listens it prints `listening HOST:PORT` (with `--listen HOST:0`, the port the kernel
chose). On SIGTERM or SIGINT it lets go of its VMs without stopping them: they run on, for the
next agent to adopt.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509

from openhosting.agent.drive_streams import AgentListener, DriveStreams
from openhosting.agent.image_cache import CACHE_DIRECTORY, ImageCache
from openhosting.agent.pki import (
    Bundle,
    ClusterTlsError,
    agent_context,
    host_bundle,
    host_distinguished_name,
    role_of,
)
from openhosting.agent.server import AgentNetwork, make_app
from openhosting.config import ConfigError, load_config
from openhosting.daemon import parse_listen
from openhosting.host_capacity import HostCapacity, measure_capacity
from openhosting.hypervisor.driver import HypervisorDriver, open_driver
from openhosting.hypervisor.migration import MigrationTls, write_qemu_tls_dir
from openhosting.hypervisor.nbd_exports import DriveExports
from openhosting.hypervisor.qemu_driver import migration_ports
from openhosting.logs import FORMATS, configure_logging
from openhosting.network import open_network
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage

DEFAULT_LISTEN = "0.0.0.0:7430"
TLS_DIRECTORY = "agent-tls"
log = logging.getLogger("openhosting.agent")
MIGRATION_TLS_DIRECTORY = "migration-tls"


def migration_tls(bundle: Bundle, state_path: Path) -> MigrationTls:
    """TLS for the live migrations in and out of this host: its bundle laid out as QEMU
    reads it (`<state_dir>/migration-tls`), and its name as the certificate gives it (what
    a source checks of this host as a target)."""
    _role, name = role_of(x509.load_pem_x509_certificate(bundle.cert.read_bytes()))
    if not name:
        raise ClusterTlsError(f"{bundle.cert} names no host")
    directory = state_path / MIGRATION_TLS_DIRECTORY
    state_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_qemu_tls_dir(bundle.ca_cert, bundle.cert, bundle.key, directory)
    return MigrationTls(directory, name)


def client_dn(host: str) -> str:
    """The subject of host `host`'s certificate, the one client an export takes."""
    try:
        return host_distinguished_name(host)
    except ClusterTlsError as error:
        raise ValueError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openhosting-agent", description=__doc__)
    parser.add_argument("--config", type=Path, help="the platform's TOML configuration file")
    parser.add_argument("--state-dir", help="the platform's state directory on this host")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to listen on")
    parser.add_argument(
        "--tls-dir", type=Path, help=f"the agent's bundle (default <state_dir>/{TLS_DIRECTORY})"
    )
    return parser


async def serve(
    driver: HypervisorDriver,
    host: str,
    port: int,
    context: ssl.SSLContext,
    capacity: Callable[[], HostCapacity] | None = None,
    storage: LocalDriveStorage | None = None,
    network: AgentNetwork | None = None,
    exports: DriveExports | None = None,
    name: str = "",
    cache: ImageCache | None = None,
) -> None:
    """Serve `driver` (with `capacity`, the host's measure, `storage`, this host's drives,
    `network`, its network driver, and `exports`, its drives' NBD exports) until SIGTERM or
    SIGINT; then let go of the VMs (they run on, and so do their NICs and exports). `name`:
    this host's, as its certificate gives it (for the log); `cache`, its copies of standard
    drives."""
    app = make_app(driver, capacity, storage, network, exports, cache)
    # No line per call (aiohttp's access log): the agent logs its events.
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    assert runner.server is not None  # made by `setup`
    streams = None if storage is None else DriveStreams(storage, context, cache)
    listener = AgentListener(runner.server, context, streams)
    bound = await listener.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # Logged before the `listening` line: whoever waits for that line finds this one.
    log.info(
        "event=agent_started host=%s listen=%s:%s pid=%s", name, bound[0], bound[1], os.getpid()
    )
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    try:
        await stopping.wait()
    finally:
        await listener.close()
        await runner.cleanup()
        idle = not driver.held()
        await driver.detach_all()
        if network is not None:
            await network.close(idle)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    try:
        config = load_config(args.config, overrides=overrides)
        host, port = parse_listen(args.listen)
        if config.log_format not in FORMATS:
            raise ConfigError(f"Invalid log_format {config.log_format!r}: text or json")
        # Before the driver and the network are opened: what they log is kept too.
        configure_logging(config.log_level, config.log_format)
        tls_dir = args.tls_dir or config.state_path / TLS_DIRECTORY
        bundle = host_bundle(tls_dir)
        context = agent_context(bundle)
        tls = migration_tls(bundle, config.state_path)
        driver = open_driver(config, tls)
        exports = DriveExports(
            config.run_path,
            tls,
            config.hypervisor.migration_address,
            migration_ports(config.hypervisor),
            client_dn,
        )
        # The drives placed on this host live in its own tier directories.
        storage = LocalDriveStorage(DriveTiers(config.tier_paths))
        # Copies of standard drives, apart from the drive tiers (no drive call reaches them).
        cache = ImageCache(config.state_path / CACHE_DIRECTORY)
        cache.clear_partial()  # no fill runs before this agent serves
        _pool, network = open_network(
            config.network, config.run_path / "network", config.hypervisor.run_as
        )
    except (ConfigError, ClusterTlsError, ValueError, OSError) as error:
        print(f"openhosting-agent: {error}", file=sys.stderr)
        return 2
    measure = functools.partial(measure_capacity, config)
    network_driver = AgentNetwork(network)
    asyncio.run(
        serve(
            driver,
            host,
            port,
            context,
            measure,
            storage,
            network_driver,
            exports,
            tls.host,
            cache,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
