"""The platform: every service assembled from one configuration, for the daemon and the
admin tool alike."""

import os
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine

from openhosting.config import Config
from openhosting.network import open_network
from openhosting.services.accounts.accounts import Accounts
from openhosting.services.accounts.audit import Audit
from openhosting.services.accounts.billing import Billing
from openhosting.services.accounts.web_sessions import WebSessions
from openhosting.services.cluster.event_relay import EventRelay
from openhosting.services.cluster.hosts import Hosts
from openhosting.services.cluster.node_operations import NodeOperations
from openhosting.services.drives.drives import Drives
from openhosting.services.drives.imaging import Imaging
from openhosting.services.drives.standard_copies import StandardCopies, remote_cache_of
from openhosting.services.drives.standard_drives import StandardDrives
from openhosting.services.events import EventBus, audit_sink
from openhosting.services.resources import Resources
from openhosting.services.servers.consoles import Consoles
from openhosting.services.servers.server_lifecycle import ServerLifecycle
from openhosting.services.servers.server_network import ServerNetworks
from openhosting.services.servers.servers import Servers
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.store import notifications
from openhosting.store.database import is_sqlite, open_engine
from openhosting.store.executor import StoreExecutor
from openhosting.store.notifications import ChangeFeed, Listener
from openhosting.store.platform_key import derive_key, load_or_create_platform_key
from openhosting.store.reader import Reader


@dataclass
class Platform:
    """The services of one platform (one state directory)."""

    config: Config
    engine: Engine
    accounts: Accounts
    drives: Drives
    servers: Servers
    reader: Reader
    imaging: Imaging
    standard_drives: StandardDrives
    resources: Resources
    audit: Audit
    billing: Billing
    events: EventBus
    consoles: Consoles
    web_sessions: WebSessions
    # Where the event loop's database work runs (worker threads unless SQLite).
    store: StoreExecutor
    hosts: Hosts
    # What the caches know of other nodes' writes (PostgreSQL; heard through `listen`).
    changes: ChangeFeed
    # With several API nodes (PostgreSQL): the operations under way they share, and the
    # event feed they tell each other. None on SQLite.
    node_operations: NodeOperations | None = None
    event_relay: EventRelay | None = None

    def listen(self) -> Listener | None:
        """On PostgreSQL, the daemon's one listening connection, started: other nodes'
        writes reach the caches, their queued jobs the imaging service. None on SQLite."""
        if is_sqlite(self.engine):
            return None
        imaging, changes, relay = self.imaging, self.changes, self.event_relay
        channels = [notifications.JOBS, notifications.CHANGES]
        if relay is not None:
            channels.append(relay.channel)

        def heard(channel: str, payload: str) -> None:
            if channel == notifications.JOBS:
                imaging.notified()
            elif channel == notifications.CHANGES:
                changes.changed()
            elif relay is not None:
                relay.heard(payload)

        listener = Listener(self.engine, channels, heard, changes.connected)
        listener.start()
        return listener

    def close(self) -> None:
        if self.event_relay is not None:
            self.event_relay.close()
        if self.node_operations is not None:
            self.node_operations.close()
        self.store.close()
        self.drives.tiers.close()
        self.reader.close()
        self.engine.dispose()


def open_platform(config: Config) -> Platform:
    """Open (and migrate) the state directory of `config` and build the services over it."""
    # The state directory holds the platform key and every drive: nobody else may look in.
    config.state_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    platform_key = load_or_create_platform_key(config.platform_key_path)
    engine = open_engine(config.store_url)
    changes = ChangeFeed()
    # This daemon among the API nodes: its jobs', operations' and events' owner.
    node = f"{secrets.token_hex(4)}/{os.getpid()}/{config.host_name}"[:64]
    node_operations = None
    if not is_sqlite(engine):
        changes.watch(engine)  # this process's commits; others' come through `listen`
        node_operations = NodeOperations(engine, node, max(1, config.host.operation_lease_seconds))
    reader = Reader(engine, changes=changes)
    store = StoreExecutor(engine)
    billing = Billing(engine, config.billing)
    hosts = Hosts(engine, config)
    drives = Drives(
        engine,
        reader,
        DriveTiers(config.tier_paths),
        derive_key(platform_key, "drive-secrets"),
        config.storage.default_cipher,
        billing,
        hosts,
        store,
        node_operations,
    )
    pool, network_driver = open_network(
        config.network, config.run_path / "network", config.hypervisor.run_as
    )
    resources = Resources(engine, reader, pool, billing)
    networks = ServerNetworks(
        engine, resources, pool, network_driver, hosts.flood_lists, hosts.remote_macs
    )
    audit = Audit(engine)
    events = EventBus(audit=audit_sink(audit.record))
    relay = None
    if not is_sqlite(engine):
        relay = EventRelay(engine, node, events)
        events.send_to_nodes = relay.send
    lifecycle = ServerLifecycle(
        engine, config, networks, events, hosts=hosts, nodes=node_operations
    )
    # Standard drives for servers on agents' hosts: copies in those hosts' image caches.
    lifecycle.copies = StandardCopies(engine, drives.storages, remote_cache_of(drives.storages))
    servers = Servers(engine, reader, drives, lifecycle, billing, store)
    consoles = Consoles(engine, servers, config.api.console_token_seconds)
    # A VM that ends closes its consoles, wherever they were opened.
    events.add_listener(consoles.observe_event, relayed=True)
    return Platform(
        config=config,
        engine=engine,
        accounts=Accounts(engine, reader, platform_key),
        drives=drives,
        servers=servers,
        reader=reader,
        imaging=Imaging(
            engine,
            drives,
            config.storage.imaging_concurrency,
            config.storage.imaging_max_rate,
            config.storage.job_retention_days,
            events,
            store=store,
            owner=node,
            lease_seconds=max(1, config.storage.imaging_lease_seconds),
        ),
        standard_drives=StandardDrives(engine, drives.files, hosts.name),
        resources=resources,
        audit=audit,
        billing=billing,
        events=events,
        consoles=consoles,
        web_sessions=WebSessions(
            engine, config.api.session_seconds, max_per_user=config.api.max_sessions_per_user
        ),
        store=store,
        hosts=hosts,
        changes=changes,
        node_operations=node_operations,
        event_relay=relay,
    )
