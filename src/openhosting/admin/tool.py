"""`openhosting-admin`: the operator's tool for users, keys and limits.

Works on the state directory directly (the same SQLite file the daemon uses, in WAL mode), so
it works whether or not the daemon runs. Output is the API's text form.
"""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from openhosting.admin import audit as admin_audit
from openhosting.admin import backup as admin_backup
from openhosting.admin import billing as admin_billing
from openhosting.admin import cluster as admin_cluster
from openhosting.admin import config as admin_config
from openhosting.admin import host as admin_host
from openhosting.admin import imaging as admin_imaging
from openhosting.admin import init as admin_init
from openhosting.admin import servers as admin_servers
from openhosting.admin.arguments import MAX_COUNT
from openhosting.config import SYSTEM_CONFIG_PATH, Config, ConfigError, load_config
from openhosting.errors import ApiError, UsageError
from openhosting.services.platform import Platform, open_platform
from openhosting.store.records import UserRecord
from openhosting.wire.payload import Properties, ValueList
from openhosting.wire.sizes import parse_size
from openhosting.wire.text import render_text


def _user_properties(user: UserRecord) -> dict[str, str | int]:
    values: dict[str, str | int] = {"user": user.uuid, "name": user.name}
    values["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(user.created_at))
    limits = user.limits()
    if limits["drive:bytes"] is not None:
        values["limit:drive:bytes"] = limits["drive:bytes"]
    for tier, limit in sorted(user.max_drive_bytes_by_tier.items()):
        values[f"limit:drive:bytes:{tier}"] = limit
    for key in ("ips", "vlans", "servers", "cpu", "mem"):
        if (value := limits[key]) is not None:
            values[f"limit:{key}"] = value
    return values


def cmd_user_create(platform: Platform, args: argparse.Namespace) -> str:
    key = platform.accounts.create_user(args.name or "")
    return render_text(
        Properties({"user": key.uuid, "secret": key.secret, "name": args.name or ""})
    )


def cmd_user_list(platform: Platform, _args: argparse.Namespace) -> str:
    rows = [{"user": u.uuid, "name": u.name} for u in platform.accounts.list_users()]
    return render_text(ValueList(("user", "name"), rows))


def cmd_user_show(platform: Platform, args: argparse.Namespace) -> str:
    return render_text(Properties(_user_properties(platform.accounts.get_user(args.uuid))))


def cmd_user_rotate_key(platform: Platform, args: argparse.Namespace) -> str:
    key = platform.accounts.rotate_key(args.uuid)
    return render_text(Properties({"user": key.uuid, "secret": key.secret}))


def cmd_user_delete(platform: Platform, args: argparse.Namespace) -> str:
    platform.accounts.delete_user(args.uuid)
    return ""


def _parse_count(text: str, option: str) -> int | None:
    if text == "none":
        return None
    if not text.isdigit():
        raise UsageError(f"--{option} must be a number or 'none', not {text!r}")
    if int(text) > MAX_COUNT:
        raise UsageError(f"--{option} must be at most {MAX_COUNT} (or 'none'), not {text}")
    return int(text)


def cmd_user_set(platform: Platform, args: argparse.Namespace) -> str:
    limits: dict[str, int | None] = {}
    if args.max_drive_bytes is not None:
        text = args.max_drive_bytes
        limits["max_drive_bytes"] = None if text == "none" else parse_size(text, "limit")
    for name in ("max_ips", "max_vlans", "max_servers", "max_cpu_mhz", "max_mem_mb"):
        if (text := getattr(args, name)) is not None:
            limits[name] = _parse_count(text, name.replace("_", "-"))
    if limits:
        platform.accounts.set_limits(args.uuid, **limits)
    for setting in args.max_drive_bytes_tier or []:
        tier, equals, text = setting.partition("=")
        if not equals or not tier:
            raise UsageError(f"--max-drive-bytes-tier takes TIER=SIZE, not {setting!r}")
        if tier not in platform.drives.tiers.names:
            known = ", ".join(sorted(platform.drives.tiers.names))
            raise UsageError(f"--max-drive-bytes-tier: no tier {tier!r} here ({known})")
        limit = None if text == "none" else parse_size(text, "limit")
        platform.accounts.set_tier_limit(args.uuid, tier, limit)
    return render_text(Properties(_user_properties(platform.accounts.get_user(args.uuid))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openhosting-admin", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        help=f"the daemon's TOML configuration file (default: {SYSTEM_CONFIG_PATH} if it"
        " exists, else the embedded defaults)",
    )
    parser.add_argument("--state-dir", help="the platform's state directory")
    areas = parser.add_subparsers(dest="area", required=True)

    user = areas.add_parser("user", help="users and their API keys")
    commands = user.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a user and print its secret key once")
    create.add_argument("--name", default="")
    create.set_defaults(run=cmd_user_create, makes_platform=True)
    commands.add_parser("list", help="list users").set_defaults(run=cmd_user_list)
    for name, run, text in (
        ("show", cmd_user_show, "show a user"),
        ("rotate-key", cmd_user_rotate_key, "replace a user's secret key and print it once"),
        ("delete", cmd_user_delete, "delete a user who owns no drive, server or resource"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("uuid", type=str.lower)
        command.set_defaults(run=run)
    limits = commands.add_parser("set", help="set a user's limits")
    limits.add_argument("uuid", type=str.lower)
    limits.add_argument("--max-drive-bytes", help="total drive bytes (k/M/G/T), or 'none'")
    limits.add_argument(
        "--max-drive-bytes-tier",
        action="append",
        metavar="TIER=SIZE",
        help="drive bytes in one storage tier (e.g. ssd=100G), or TIER=none; repeatable",
    )
    limits.add_argument("--max-ips", help="number of IP resources, or 'none'")
    limits.add_argument("--max-vlans", help="number of VLAN resources, or 'none'")
    limits.add_argument("--max-servers", help="number of servers, or 'none'")
    limits.add_argument(
        "--max-cpu", dest="max_cpu_mhz", help="total cpu MHz of active servers, or 'none'"
    )
    limits.add_argument(
        "--max-mem", dest="max_mem_mb", help="total mem MB of active servers, or 'none'"
    )
    limits.set_defaults(run=cmd_user_set)
    admin_imaging.add_parsers(areas)
    admin_audit.add_parsers(areas)
    admin_billing.add_parsers(areas)
    admin_backup.add_parsers(areas)
    admin_config.add_parsers(areas)
    admin_init.add_parsers(areas)
    admin_servers.add_parsers(areas)
    admin_host.add_parsers(areas)
    admin_cluster.add_parsers(areas)
    return parser


def config_path(given: Path | None) -> Path | None:
    """The configuration file to read: `--config`, else the installed platform's if any.

    On an installed host the operator types `openhosting-admin user list` and means the
    platform the service runs (see docs/operating.md).
    """
    if given is not None:
        return given
    return SYSTEM_CONFIG_PATH if SYSTEM_CONFIG_PATH.exists() else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    try:
        config = load_config(config_path(args.config), overrides=overrides)
    except ConfigError as error:
        print(f"openhosting-admin: {error}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(_run(config, args))
    except ConfigError as error:  # e.g. network settings, only checked when the platform opens
        print(f"openhosting-admin: {error}", file=sys.stderr)
        return 2
    except ApiError as error:
        print(f"openhosting-admin: {error.message}", file=sys.stderr)
        return 1
    return 0


def missing_database(config: Config) -> Path | None:
    """The SQLite file `config` names if it does not exist (no platform there yet), else None
    (it exists, or the store is a PostgreSQL database, which the daemon's migrations make)."""
    if config.store.url and not config.store.url.startswith("sqlite:///"):
        return None
    path = Path(config.store_url.removeprefix("sqlite:///"))
    return None if path.exists() else path.absolute()


def _run(config: Config, args: argparse.Namespace) -> str:
    """Run the command: on the state directory as it is, or on the platform opened over it.

    Only the commands that make a platform's first things (`init`, `user create`, `standard
    add`) open a state directory without a database, which makes it: any other would make an
    empty platform wherever it ran (a mistyped `--state-dir`, the wrong working directory for
    the default `state`) and answer from that, an empty `user list` with status 0.
    """
    if (run_on_state := getattr(args, "run_on_state", None)) is not None:
        return str(run_on_state(config, args))
    if (database := missing_database(config)) is not None:
        if not getattr(args, "makes_platform", False):
            raise ConfigError(
                f"no platform in {database.parent}: {database.name} does not exist. Name the"
                " daemon's state directory (--state-dir) or configuration (--config), or make"
                " a platform there with `openhosting-admin init`"
            )
        if args.area != "init":  # making it is init's job; here it may be a mistyped path
            print(f"openhosting-admin: made a new platform in {database.parent}", file=sys.stderr)
    platform = open_platform(config)
    try:
        run: Callable[[Platform, argparse.Namespace], str] = args.run
        return run(platform, args)
    finally:
        platform.close()


if __name__ == "__main__":
    sys.exit(main())
