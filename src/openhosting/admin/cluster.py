"""`openhosting-admin cluster init` and `host add NAME --out DIR`: the cluster CA and the
certificates of its nodes (agent/pki.py says what they hold)."""

import argparse
from pathlib import Path
from typing import Any

from openhosting.agent.pki import CLUSTER_DIRECTORY, ClusterTlsError, add_host, init_cluster
from openhosting.config import Config
from openhosting.errors import UsageError
from openhosting.wire.payload import Properties
from openhosting.wire.text import render_text


def cmd_cluster_init(config: Config, _args: argparse.Namespace) -> str:
    try:
        bundle = init_cluster(config.state_path)
    except ClusterTlsError as error:
        raise UsageError(str(error)) from None
    return render_text(
        Properties(
            {
                "cluster:ca": str(bundle.ca_cert),
                "control:cert": str(bundle.cert),
                "control:key": str(bundle.key),
            }
        )
    )


def cmd_host_add(config: Config, args: argparse.Namespace) -> str:
    try:
        if not args.out:  # Path("") is ".": the host's key where the tool happens to run
            raise ClusterTlsError("Cannot write the bundle to '': name its directory")
        bundle = add_host(config.state_path, args.name, Path(args.out))
    except ClusterTlsError as error:
        raise UsageError(str(error)) from None
    return render_text(
        Properties(
            {
                "host": args.name,
                "cluster:ca": str(bundle.ca_cert),
                "host:cert": str(bundle.cert),
                "host:key": str(bundle.key),
            }
        )
    )


def add_parsers(areas: Any) -> None:
    """Add the `cluster` area to the admin tool's parser."""
    cluster = areas.add_parser("cluster", help="the cluster CA (mutual TLS between nodes)")
    commands = cluster.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "init",
        help=f"make the cluster CA and the control plane's certificate in <state_dir>/"
        f"{CLUSTER_DIRECTORY} (refused if one exists)",
    ).set_defaults(run_on_state=cmd_cluster_init)


def add_host_parser(commands: Any) -> None:
    """Add `host add` to the `host` area's commands."""
    add = commands.add_parser(
        "add", help="issue a host agent's certificate and write its bundle to --out"
    )
    add.add_argument("name", help="the host's name (a lowercase DNS name)")
    add.add_argument("--out", required=True, help="the directory for the agent's bundle")
    add.set_defaults(run_on_state=cmd_host_add)
