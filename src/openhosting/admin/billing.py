"""`openhosting-admin account`: balances, credit and metered usage of users."""

import argparse
import time
from typing import Any

from openhosting.admin.arguments import limit_argument
from openhosting.services.accounts.billing import format_micros, to_micros
from openhosting.services.platform import Platform
from openhosting.store.records import UsageRecord
from openhosting.wire.payload import Properties, PropertiesList
from openhosting.wire.text import render_text


def cmd_show(platform: Platform, args: argparse.Namespace) -> str:
    return render_text(Properties(platform.billing.account_info(args.uuid)))


def cmd_credit(platform: Platform, args: argparse.Namespace) -> str:
    platform.billing.credit(args.uuid, to_micros(args.amount))
    return render_text(Properties(platform.billing.account_info(args.uuid)))


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _usage(row: UsageRecord) -> dict[str, str | int]:
    return {
        "start": _stamp(row.start), "end": _stamp(row.end),
        "drive:bytes": row.drive_bytes, "cpu": row.cpu_mhz, "mem": row.mem_mb,
        "ips": row.ips, "vlans": row.vlans, "charge": format_micros(row.charge),
    }  # fmt: skip


def cmd_usage(platform: Platform, args: argparse.Namespace) -> str:
    rows = platform.billing.usage_history(args.uuid, args.limit)
    return render_text(PropertiesList([_usage(row) for row in rows]))


def add_parsers(areas: Any) -> None:
    account = areas.add_parser("account", help="balances, credit and usage")
    commands = account.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="balance, limits and what is in use now")
    show.add_argument("uuid", type=str.lower)
    show.set_defaults(run=cmd_show)
    credit = commands.add_parser("credit", help="add (or with a minus, take) credit")
    credit.add_argument("uuid", type=str.lower)
    credit.add_argument("amount", help="in the platform's currency, e.g. 25 or 9.99")
    credit.set_defaults(run=cmd_credit)
    usage = commands.add_parser("usage", help="metered usage and its charges, newest last")
    usage.add_argument("uuid", type=str.lower)
    usage.add_argument(
        "--limit", type=limit_argument, default=100, help="the newest N days metered (100)"
    )
    usage.set_defaults(run=cmd_usage)
