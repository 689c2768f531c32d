"""`openhosting-admin server …`: servers as the operator sees them."""

import argparse
from typing import Any

from openhosting.services.platform import Platform


def cmd_server_log(platform: Platform, args: argparse.Namespace) -> str:
    """The server's serial log: live while it exists, kept for a while after it is destroyed."""
    return platform.servers.serial_log(args.uuid).decode(errors="replace")


def add_parsers(areas: Any) -> None:
    """Add the `server` area to the admin tool's parser."""
    server = areas.add_parser("server", help="servers")
    commands = server.add_subparsers(dest="command", required=True)
    log = commands.add_parser(
        "log", help="print a server's serial log (also for a while after it is destroyed)"
    )
    log.add_argument("uuid", type=str.lower)
    log.set_defaults(run=cmd_server_log)
