"""The daemon's configuration: embedded defaults, a TOML file, then `OH_*` environment overrides.

Every setting has a default that lets `openhostingd` run out of the box. A TOML table maps to
a section (`[api] listen = "…"`) and its environment override joins the names
(`OH_API_LISTEN`). Top-level settings have no section (`state_dir`, `OH_STATE_DIR`).
"""

import dataclasses
import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openhosting.config_values import value_problems

# Where an installed platform keeps its configuration (scripts/install writes it).
SYSTEM_CONFIG_PATH = Path("/etc/openhosting/openhosting.toml")


class ConfigError(Exception):
    """The configuration file or an override is invalid."""


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP edge."""

    listen: str = "127.0.0.1:8080"
    # Largest key/value request body accepted; drive writes are streamed and not limited.
    max_body_bytes: int = 64 * 1024
    # Public address clients use; printed in the README's export lines.
    public_url: str = ""
    # HTTPS: the certificate chain and private key files (PEM); empty: plain HTTP.
    tls_cert: str = ""
    tls_key: str = ""
    # A connection that sends no complete request for this long is closed (slow clients,
    # idle keep-alives); a request body that stalls this long is refused.
    idle_timeout: int = 30
    # Repeated authentication failures of one (address, user tried): after
    # `auth_failures_free` within `auth_failure_window` seconds each further failure waits
    # longer, and past `auth_failures_max` failures are refused (401 with Retry-After) until
    # the window ends. One user from every address and one address for every user get four
    # times these. The right key is never slowed or refused.
    auth_failures_free: int = 5
    auth_failures_max: int = 30
    auth_failure_window: int = 300
    # Requests per second per user (a token bucket with a burst of 4 seconds' worth); 0: off.
    user_requests_per_second: int = 0
    # Drive reads and writes under way at once, per user and on the host (each may hold about
    # 8 MiB of buffers); more are refused with 429 `busy` and Retry-After. 0: no limit.
    max_transfers_per_user: int = 16
    max_transfers: int = 64
    # Where Prometheus scrapes `/metrics` (also `/health` and `/ready`): a listener apart from
    # the API, for the provider's monitoring network only; empty: no metrics listener.
    metrics_listen: str = "127.0.0.1:9180"
    # Seconds a web console token (`POST /servers/S/console`) may wait to be used: its
    # WebSocket must open within this time, once.
    console_token_seconds: int = 60
    # Where noVNC's files are (Debian's `novnc` package): the console page loads its `core/`
    # and `vendor/` JavaScript modules from here, served read-only under /console/novnc/.
    console_novnc_dir: str = "/usr/share/novnc"
    # Seconds a dashboard sign-in lasts (its session cookie's expiry); then sign in again.
    session_seconds: int = 8 * 3600
    # Live dashboard sessions one user may hold: a sign-in past it ends their oldest ones
    # (a client signing in in a loop would otherwise add a row each time, kept for hours).
    max_sessions_per_user: int = 20


@dataclass(frozen=True)
class StorageSettings:
    """Drive storage."""

    # Where the drive files of the `disk` tier live; empty means `<state_dir>/drives`.
    drive_dir: str = ""
    # More storage tiers, each with its own drive directory (its own file system in
    # production): space-separated `NAME=DIR`, e.g. `ssd=/srv/ssd/drives`. A drive lives in
    # its tier's directory. `ssd` shares `disk`'s directory unless named here; a tier not
    # named here (and not `disk` or `ssd`) is refused.
    tiers: str = ""
    # The cipher of a new drive that names none: `aes-xts-plain` (LUKS1) or `none`.
    default_cipher: str = "aes-xts-plain"
    # Host-wide number of imaging jobs that run at once.
    imaging_concurrency: int = 2
    # Source bytes per second one imaging job may process, to spare running servers' disks;
    # 0 means no limit.
    imaging_max_rate: int = 0
    # Seconds a daemon's claim on a running imaging job holds unless renewed: with several
    # daemons on one database, a job whose daemon died is started again by another this long
    # after its last renewal.
    imaging_lease_seconds: int = 15
    # How often, in seconds, each agent host's drive files, and this host's, are compared
    # with the drive rows (an agent's also whenever it is connected again): files no row
    # names there go.
    orphan_check_seconds: int = 3600
    # A drive file no row names is removed only once unmodified this many seconds: a create
    # writes its file before its row, maybe through another API node right now.
    orphan_grace_seconds: int = 600
    # Days a finished imaging job's row is kept (for `openhosting-admin jobs list`); 0: for
    # ever.
    job_retention_days: int = 30


@dataclass(frozen=True)
class HypervisorSettings:
    """QEMU."""

    # `qemu`; or `fake`: VMs held in memory by the daemon, for fast tests only.
    driver: str = "qemu"
    # `kvm`, `tcg`, or `auto`: KVM where the CPU and /dev/kvm allow it, else TCG.
    accelerator: str = "auto"
    # The QEMU program, a name looked up in PATH or a full path.
    qemu_binary: str = "qemu-system-x86_64"
    # Where each running VM keeps its pidfile, sockets and serial log; empty means a short
    # directory under /run (unix socket paths must stay under 108 bytes).
    run_dir: str = ""
    # The address VNC servers listen on in user-mode networking.
    vnc_listen: str = "127.0.0.1"
    # The speed of one host core: a server's `cpu` MHz is this share of a core.
    core_mhz: int = 2000
    # How long a VM may take to start (QEMU) or to stop before it is killed.
    start_timeout: int = 30
    stop_timeout: int = 10
    # The unprivileged user QEMU becomes once its files are open: `auto` is `nobody` when
    # the daemon runs as root, and none otherwise; empty: none.
    run_as: str = "auto"
    # QEMU's seccomp sandbox.
    sandbox: bool = True
    # A VM's serial log: the daemon keeps at most this many files of this many KiB each (the
    # oldest output goes first), whatever the guest prints.
    serial_log_kib: int = 256
    serial_log_files: int = 2
    # Days the last of a destroyed server's serial log is kept in `<state_dir>/logs/servers`;
    # 0: not kept.
    serial_log_retention_days: int = 7
    # This host's address on the cluster network, where VMs moving in by live migration
    # take their drives (NBD) and their state over TCP, and where an agent serves its drives
    # to the VMs of other hosts (NBD); empty: unix sockets, for migrations between drivers
    # of one machine only, and no drive served to another host.
    migration_address: str = ""
    # The TCP ports (FIRST-LAST) those streams listen on, two per VM moving in at once and
    # one per drive served to another host's VM.
    migration_ports: str = "49152-49215"
    # MiB/s a live migration out of this host may send, its drives' copy and its memory
    # alike (one after the other); 0: as fast as it goes.
    migration_max_bandwidth: int = 0


@dataclass(frozen=True)
class HostSettings:
    """This host, as the platform's hosts table knows it (`openhosting-admin host list`)."""

    # The host's name among the platform's hosts; empty: the machine's hostname.
    name: str = ""
    # Memory kept back for the host itself (the daemon, the kernel, QEMU's own overhead), in
    # MiB: the memory servers may use is the host's total less this.
    memory_reserve_mb: int = 1024
    # How often the daemon tells the hosts table that this host is alive, in seconds.
    heartbeat_seconds: int = 5
    # A host silent for longer than this, in seconds, is `offline`.
    offline_seconds: int = 20
    # With several API nodes on PostgreSQL: how long a node's operation under way (a drive
    # write, a server's start) keeps its object from the others' conflicting ones unless the
    # node renews it (every third of it); a node killed frees its objects after this.
    operation_lease_seconds: int = 10


@dataclass(frozen=True)
class NetworkSettings:
    """Server networking."""

    # `user`: QEMU user-mode networking (no host set-up); `bridge`: bridges, taps, dnsmasq.
    mode: str = "user"
    # Bridge mode: the network namespace holding the bridges, taps, dnsmasq and QEMU (created
    # if missing, never deleted); empty means the host's own network.
    namespace: str = ""
    # The bridge that carries the public pool (created if missing).
    public_bridge: str = "oh-public"
    # The host's address on the public bridge (dnsmasq answers from it), in the subnet;
    # empty means the gateway: this host routes for the pool.
    host_address: str = ""
    # The public address pool (a documentation range by default): subnet, gateway, name
    # servers (space-separated) and the allocatable range `FIRST-LAST`.
    pool_subnet: str = "192.0.2.0/24"
    pool_gateway: str = "192.0.2.1"
    pool_nameservers: str = "192.0.2.1"
    pool_range: str = "192.0.2.10-192.0.2.250"
    # Bridge mode: VLAN bridges are PREFIX + part of the VLAN UUID; taps PREFIX + server + NIC.
    vlan_bridge_prefix: str = "oh-v"
    tap_prefix: str = "oh-t"
    dnsmasq_binary: str = "dnsmasq"
    # How long a DHCP lease lasts (seconds; dnsmasq's minimum is 120).
    lease_seconds: int = 3600
    # Bridge mode, VLANs across hosts (docs/networking.md): this host's underlay address, the
    # source of its VXLAN packets; empty: VLANs stay on this host (no VXLAN device).
    vxlan_local: str = ""
    # The UDP port of VXLAN between hosts (the underlay must carry it between hosts only).
    vxlan_port: int = 4789
    # The underlay link the VXLAN packets leave by (its MTU less 50 is the VLANs' MTU);
    # empty: the route to each peer decides, and the VLANs' MTU is 1450.
    vxlan_device: str = ""
    # The other hosts' underlay addresses (space-separated): each VLAN's broadcasts, unknown
    # destinations and multicast are copied to every one of them. Used while the hosts table
    # knows no other online host's address (`host set --vxlan-local`), which it then replaces.
    vxlan_peers: str = ""
    # VXLAN devices are PREFIX + part of the VLAN UUID.
    vxlan_prefix: str = "oh-x"


@dataclass(frozen=True)
class BillingSettings:
    """Metering usage and charging it against prepaid balances.

    Prices are in the platform's currency per hour of use; balances are kept in millionths
    of it. Off by default: a private platform has nobody to bill.
    """

    # Meter usage and charge it against balances (`openhosting-admin account credit`).
    enabled: bool = False
    # How often usage is measured and charged, in seconds.
    interval: int = 60
    # Prices per hour: a GB of drive, a GHz of cpu, a GB of mem, an IP, a VLAN.
    drive_gb_hour: str = "0.0002"
    cpu_ghz_hour: str = "0.01"
    mem_gb_hour: str = "0.01"
    ip_hour: str = "0.005"
    vlan_hour: str = "0.001"


@dataclass(frozen=True)
class StoreSettings:
    """The database: the platform's state (users, drives, servers, jobs, ...)."""

    # Empty: the SQLite file `<state_dir>/openhosting.sqlite` (one host, one process at a
    # time writing: the embedded default). `postgresql+psycopg://USER@HOST:PORT/DATABASE`:
    # PostgreSQL 15 (the cluster store). Keep a password out of this file: libpq reads
    # PGPASSWORD or ~/.pgpass.
    url: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration of one daemon."""

    # The database, the platform key and (unless storage.drive_dir) the drives.
    state_dir: str = "state"
    # `debug`, `info`, `warning` or `error`; logs go to standard error.
    log_level: str = "info"
    # `text`: one `key=value` line per event; `json`: one JSON object per line (for log
    # shippers), the `key=value` pairs as fields.
    log_format: str = "text"
    # Create a first user when the database has none, and print how to reach the API.
    first_user: bool = True
    api: ApiSettings = field(default_factory=ApiSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    hypervisor: HypervisorSettings = field(default_factory=HypervisorSettings)
    host: HostSettings = field(default_factory=HostSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    billing: BillingSettings = field(default_factory=BillingSettings)
    store: StoreSettings = field(default_factory=StoreSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def drive_path(self) -> Path:
        return (
            Path(self.storage.drive_dir) if self.storage.drive_dir else self.state_path / "drives"
        )

    @property
    def tier_paths(self) -> dict[str, Path]:
        """Each storage tier's drive directory (ConfigError if `storage.tiers` is invalid)."""
        return parse_tiers(self.storage.tiers, self.drive_path)

    @property
    def database_path(self) -> Path:
        """The SQLite file of the embedded default (used unless `store.url` names another)."""
        return self.state_path / "openhosting.sqlite"

    @property
    def store_url(self) -> str:
        """The database's SQLAlchemy URL: `store.url`, else the SQLite file in the state
        directory."""
        return self.store.url or f"sqlite:///{self.database_path}"

    @property
    def run_path(self) -> Path:
        if self.hypervisor.run_dir:
            return Path(self.hypervisor.run_dir)
        # One short directory per state directory, so two platforms on a host never meet.
        tag = hashlib.sha256(str(self.state_path.resolve()).encode()).hexdigest()[:10]
        return default_run_base() / tag

    @property
    def host_name(self) -> str:
        """This host's name among the platform's hosts (`host.name`, else the hostname)."""
        return self.host.name or socket.gethostname()

    @property
    def platform_key_path(self) -> Path:
        return self.state_path / "platform.key"


def default_run_base() -> Path:
    """Where the run directories of platforms without `hypervisor.run_dir` are made."""
    return (
        Path("/run/openhosting") if os.geteuid() == 0 else Path(f"/tmp/openhosting-{os.geteuid()}")
    )


DEFAULT_TIER = "disk"
# A tier's name is stored with each drive (16 characters at most) and is a Prometheus label.
_TIER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")


def is_tier_name(name: str) -> bool:
    """Whether `name` can name a storage tier."""
    return _TIER_NAME.fullmatch(name) is not None


def parse_tiers(text: str, disk_dir: Path) -> dict[str, Path]:
    """The tiers of `storage.tiers` (`NAME=DIR ...`) with `disk` in `disk_dir` and `ssd`
    sharing it unless named."""
    tiers = {DEFAULT_TIER: disk_dir}
    named: set[str] = set()
    for entry in text.split():
        name, equals, directory = entry.partition("=")
        if not equals or not is_tier_name(name) or not directory:
            raise ConfigError(
                f"Invalid storage.tiers entry {entry!r}: expected NAME=DIR, NAME in lower case"
                " letters, digits, - and _ (16 at most)"
            )
        if name == DEFAULT_TIER:
            raise ConfigError("storage.tiers cannot name disk: its directory is storage.drive_dir")
        if name in named:
            raise ConfigError(f"storage.tiers names {name} twice")
        named.add(name)
        tiers[name] = Path(directory)
    tiers.setdefault("ssd", disk_dir)
    return tiers


def _convert(name: str, kind: Any, value: Any) -> Any:
    """Check a file value or convert an environment string to the field's type."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"Invalid value for {name}: {value!r} (expected {kind.__name__})")


def _build(
    cls: Any, table: Mapping[str, Any], env: Mapping[str, str], prefix: str, section: str = ""
) -> Any:
    """`cls` from the file's `table` and the environment: `prefix` begins the names of its
    variables (`api_` for OH_API_…), `section` those of its file settings (`api.`), as an
    error names them."""
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"Unknown setting {section}{key}")
    if prefix:  # a section's: OH_API_LISTNE is a typo of one of its settings, not silence
        variables = {f"OH_{prefix}{name}".upper() for name in known}
        for name in env:
            if name.startswith(f"OH_{prefix}".upper()) and name not in variables:
                raise ConfigError(f"Unknown setting {name}: no such {section.rstrip('.')} setting")
    for item in dataclasses.fields(cls):
        kind = item.type
        env_name = f"OH_{prefix}{item.name}".upper()
        if dataclasses.is_dataclass(kind):
            sub_table = table.get(item.name, {})
            if not isinstance(sub_table, Mapping):
                raise ConfigError(f"Setting {section}{item.name} must be a table")
            values[item.name] = _build(
                kind, sub_table, env, f"{prefix}{item.name}_", f"{section}{item.name}."
            )
            continue
        if env_name in env:
            values[item.name] = _convert(env_name, kind, env[env_name])
        elif item.name in table:
            values[item.name] = _convert(f"{section}{item.name}", kind, table[item.name])
    return cls(**values)


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the TOML file at `path`, then `OH_*` variables, then `overrides`.

    `overrides` are the command line's top-level settings (`state_dir`) or sections given as
    mappings (`{"api": {"listen": "…"}}`).
    """
    table: dict[str, Any] = {}
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"Cannot read configuration {path}: {error}") from None
    config = _build(Config, table, os.environ if env is None else env, "")
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            config = dataclasses.replace(
                config, **{key: dataclasses.replace(getattr(config, key), **value)}
            )
        else:
            config = dataclasses.replace(config, **{key: value})
    if not config.state_dir.strip():
        # An empty path is the working directory: the database, key and drives would be
        # made among whatever files are there (an `OH_STATE_DIR=` left empty).
        raise ConfigError("state_dir is empty: name the platform's state directory")
    for problem in value_problems(flat_settings(config)):
        raise ConfigError(problem)
    # Checked now: a bad tier list stops the daemon at its start, not at a drive's creation.
    parse_tiers(config.storage.tiers, config.drive_path)
    check_store_url(config.store.url)
    return config


def flat_settings(config: Config) -> dict[str, Any]:
    """Every setting of `config` by the name the file gives it (`log_level`, `api.listen`)."""
    settings: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            for setting in dataclasses.fields(value):
                settings[f"{item.name}.{setting.name}"] = getattr(value, setting.name)
        else:
            settings[item.name] = value
    return settings


# The databases the store runs on, by the start of their SQLAlchemy URL.
STORE_URL_PREFIXES = ("sqlite:///", "postgresql+psycopg://")


def check_store_url(url: str) -> None:
    """ConfigError unless `url` is empty or names a database the store runs on."""
    if url and not url.startswith(STORE_URL_PREFIXES):
        raise ConfigError(
            "Invalid store.url: expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
