"""The database tables, as SQLAlchemy Core metadata (the migrations create them)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("name", String(256), nullable=False, server_default=""),
    # HMAC-SHA256 of the secret API key under a key derived from the platform key (hex).
    Column("key_hash", String(64), nullable=False),
    Column("created_at", Integer, nullable=False),
    # Subscription limits; NULL means no limit.
    Column("max_drive_bytes", BigInteger, nullable=True),
    # Per tier, a JSON object tier → bytes (the tiers without a key have no limit of their own).
    Column("max_drive_bytes_by_tier", Text, nullable=False, server_default="{}"),
    Column("max_ips", Integer, nullable=True),
    Column("max_vlans", Integer, nullable=True),
    Column("max_servers", Integer, nullable=True),
    Column("max_cpu_mhz", Integer, nullable=True),  # of active servers
    Column("max_mem_mb", Integer, nullable=True),  # of active servers
    # Prepaid balance in millionths of the platform's currency, and when usage was last
    # charged against it.
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("metered_at", Float, nullable=True),
)

drives = Table(
    "drives",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("name", String(256), nullable=False, server_default=""),
    Column("size", BigInteger, nullable=False),
    Column("claim_type", String(16), nullable=False, server_default="exclusive"),
    Column("readers", Text, nullable=False, server_default=""),
    Column("tags", Text, nullable=False, server_default=""),
    Column("user_keys", Text, nullable=False, server_default="{}"),  # JSON object
    Column("avoid", Text, nullable=False, server_default=""),
    Column("cipher", String(32), nullable=False),
    Column("tier", String(16), nullable=False, server_default="disk"),
    # For encrypted drives: the LUKS passphrase (for QEMU) and master key (for in-process
    # I/O), each wrapped by a key derived from the platform key.
    Column("wrapped_passphrase", LargeBinary, nullable=True),
    Column("wrapped_master_key", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("read_bytes", BigInteger, nullable=False, server_default="0"),
    Column("read_requests", BigInteger, nullable=False, server_default="0"),
    Column("write_bytes", BigInteger, nullable=False, server_default="0"),
    Column("write_requests", BigInteger, nullable=False, server_default="0"),
    # Standard drives (owned by PLATFORM_USER): how servers mount them, and for gzip images
    # their format and decompressed size.
    Column("media", String(8), nullable=False, server_default="disk"),
    Column("format", String(16), nullable=False, server_default=""),
    Column("rawsize", BigInteger, nullable=True),
    # What drive info shows of imaging into this drive (`queued`, `42%`, NULL when none is
    # under way) and the reason the last imaging failed; kept by services/drives/imaging.py.
    Column("imaging", String(16), nullable=True),
    Column("imaging_error", Text, nullable=True),
    # The host whose storage holds the drive's file (`hosts.name`; empty: not yet placed,
    # a drive from before hosts, given the local host's name when it registers).
    Column("host", String(253), nullable=False, server_default=""),
    Index("drives_by_user", "user"),
    Index("drives_by_host", "host", "tier"),
)

# The platform's hypervisor hosts, their capacity and when each last said it was alive.
hosts = Table(
    "hosts",
    metadata,
    Column("name", String(253), primary_key=True),
    Column("state", String(16), nullable=False, server_default="online"),
    Column("cores", Integer, nullable=False),
    Column("core_mhz", Integer, nullable=False),
    Column("memory_mb", BigInteger, nullable=False),
    Column("disk_bytes_by_tier", Text, nullable=False, server_default="{}"),  # JSON object
    Column("heartbeat_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    # HOST:PORT of the host's agent (openhosting-agent); empty: no agent, the daemon on the
    # host runs its VMs itself.
    Column("agent", String(300), nullable=False, server_default=""),
    # The host's VXLAN underlay address (`host set --vxlan-local`, or its daemon's
    # `network.vxlan_local`); empty: none known. Every other online host floods VLANs to it.
    Column("vxlan_local", String(45), nullable=False, server_default=""),
)

# Who holds a drive: a server's device (`guest`) or an imaging job (`imaging`).
claims = Table(
    "claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("drive", String(36), ForeignKey("drives.uuid", ondelete="CASCADE"), nullable=False),
    Column("user", String(36), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("holder", String(36), nullable=False),
    Column("device", String(32), nullable=False, server_default=""),
    Column("exclusive", Boolean, nullable=False),
    # For a `guest` claim: how much of what the server's QEMU counted for this drive since it
    # started is already in the drive's I/O counters (services/drives/guest_io.py). A claim is made
    # at each VM start, when QEMU's counters are 0, and outlives a daemon restart with its VM.
    Column("guest_read_bytes", BigInteger, nullable=False, server_default="0"),
    Column("guest_read_requests", BigInteger, nullable=False, server_default="0"),
    Column("guest_write_bytes", BigInteger, nullable=False, server_default="0"),
    Column("guest_write_requests", BigInteger, nullable=False, server_default="0"),
    Index("claims_by_drive", "drive"),
)

servers = Table(
    "servers",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    # The configuration as `ServerConfig.canonical_properties()` gives it (JSON object).
    Column("config", Text, nullable=False),
    # What the server should be: `active` while its VM is meant to run, `stopped`, or `dead`
    # after its VM crashed. Whether a VM really runs is read from QEMU, never from here.
    Column("status", String(16), nullable=False, server_default="stopped"),
    Column("started_at", Integer, nullable=True),
    Column("vnc_display", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    # The host whose driver runs the server's VM (set at each start; empty: the daemon's own
    # host, as for every server started before host agents).
    Column("host", String(253), nullable=False, server_default=""),
    Index("servers_by_user", "user"),
    Index("servers_by_host", "host"),
)

# The owner of the standard drives (the public image library): a row in `users` that no key
# opens and that user listings leave out.
PLATFORM_USER = "00000000-0000-0000-0000-000000000000"

# Imaging jobs (services/drives/imaging.py): one row per `/drives/D/image/SRC[/conversion]` request.
# `dst` and `src` are plain UUIDs, not foreign keys: the history outlives the drives.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(36), nullable=False),
    Column("dst", String(36), nullable=False),
    Column("src", String(36), nullable=False),
    Column("conversion", String(16), nullable=False, server_default=""),
    Column("state", String(16), nullable=False),  # queued | running | done | failed
    Column("bytes_done", BigInteger, nullable=False, server_default="0"),
    Column("bytes_total", BigInteger, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    # The daemon running it (services/drives/imaging.py), and until when that holds unless renewed:
    # a job whose lease ran out (its daemon died) is taken by another and started again.
    Column("owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),  # starts so far
    Index("jobs_by_state", "state"),
    Index("jobs_by_dst", "dst"),
)

# IP and VLAN resources (services/resources.py): `resource` is the address of an `ip` (from the
# platform's pool), the UUID of a `vlan`.
resources = Table(
    "resources",
    metadata,
    Column("type", String(8), primary_key=True),
    Column("resource", String(64), primary_key=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("name", String(256), nullable=False, server_default=""),
    Column("tags", Text, nullable=False, server_default=""),
    Column("user_keys", Text, nullable=False, server_default="{}"),  # JSON object
    Column("created_at", Integer, nullable=False),
    # A VLAN's VXLAN network identifier (store/vnis.py), the same on every host for its life;
    # NULL for an IP.
    Column("vni", Integer, nullable=True),
    Index("resources_by_user", "user"),
    UniqueConstraint("vni", name="resources_vni"),
)

# The NICs of active servers and what they hold (services/servers/server_network.py): a row from
# start to stop. `network` is `public` or a VLAN UUID; `address` the pool address the NIC is offered
# (an IP resource, or a temporary one for `nic:0:dhcp auto`), unique while held.
server_nics = Table(
    "server_nics",
    metadata,
    Column("server", String(36), primary_key=True),
    Column("nic", Integer, primary_key=True),
    Column("user", String(36), nullable=False),
    Column("network", String(36), nullable=False),
    Column("mac", String(17), nullable=False),
    Column("address", String(15), nullable=True, unique=True),
    Column("temporary", Boolean, nullable=False, server_default="0"),
    UniqueConstraint("network", "mac", name="server_nics_mac_per_network"),
)

# Every state-changing command: who asked what, when, and how it ended.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("user", String(36), nullable=False),
    Column("remote", String(64), nullable=False, server_default=""),
    Column("method", String(8), nullable=False),
    Column("path", String(512), nullable=False),
    # The drive, server or resource the command named, if any.
    Column("object", String(64), nullable=True),
    Column("status", Integer, nullable=False),
    Column("error", String(16), nullable=False, server_default=""),
    Index("audit_by_object", "object"),
    Index("audit_by_user", "user"),
)

# What each user used over each metering interval, and what it cost.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("drive_bytes", BigInteger, nullable=False),
    Column("cpu_mhz", Integer, nullable=False),
    Column("mem_mb", Integer, nullable=False),
    Column("ips", Integer, nullable=False),
    Column("vlans", Integer, nullable=False),
    Column("charge", BigInteger, nullable=False),  # millionths
    Index("usage_by_user", "user", "end"),
)

# Web console tokens (services/servers/consoles.py): each lets one WebSocket open the VNC console of
# one server for its user, once, before `expires`. Only the token's SHA-256 is kept, so
# whoever reads the database cannot open a console with what it holds.
console_tokens = Table(
    "console_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("server", String(36), nullable=False),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("expires", Float, nullable=False),
    # When its WebSocket used it; a used token is kept (refused) until it expires.
    Column("used_at", Float, nullable=True),
    # The dashboard session that asked for it (services/accounts/web_sessions.py's session id): only
    # that session's cookie opens it. NULL: asked with Basic authentication, a bearer token.
    Column("session_hash", String(64), nullable=True),
    Index("console_tokens_by_expiry", "expires"),
)

# Dashboard sessions (services/accounts/web_sessions.py): a browser signed in as `user` until
# `expires`. Only the cookie's SHA-256 is kept, so whoever reads the database cannot sign in
# with what it holds.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Index("web_sessions_by_expiry", "expires"),
)

# Operations under way on PostgreSQL (services/cluster/node_operations.py): a drive being written,
# read or resized, a server's turn, held by the API node (`owner`) doing it, so that the
# other nodes' checks see it. `lease_until` is renewed while it runs: a row whose lease has
# passed (its node died) counts for nothing. SQLite keeps them in the process's memory only.
operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("object", String(36), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("lease_until", Float, nullable=False),
    Index("operations_by_object", "object"),
)
