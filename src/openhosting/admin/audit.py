"""`openhosting-admin audit`: the history of state-changing commands, by object or user."""

import argparse
import time
from typing import Any

from openhosting.admin.arguments import limit_argument
from openhosting.services.platform import Platform
from openhosting.store.records import AuditRecord
from openhosting.wire.payload import PropertiesList
from openhosting.wire.text import render_text


def _entry(row: AuditRecord) -> dict[str, str | int]:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.at))
    entry: dict[str, str | int] = {
        "at": at, "user": row.user, "remote": row.remote, "command": row.path,
        "status": row.status,
    }  # fmt: skip
    if row.error:
        entry["error"] = row.error
    return entry


def cmd_audit(platform: Platform, args: argparse.Namespace) -> str:
    rows = platform.audit.history(object_id=args.object, user=args.user, limit=args.limit)
    return render_text(PropertiesList([_entry(row) for row in rows]))


def add_parsers(areas: Any) -> None:
    audit = areas.add_parser("audit", help="who changed what, and when")
    audit.add_argument("--object", type=str.lower, help="a drive, server or resource id")
    audit.add_argument("--user", type=str.lower, help="a user's UUID")
    audit.add_argument("--limit", type=limit_argument, default=100, help="the newest N entries")
    audit.set_defaults(run=cmd_audit)
