"""`openhosting-admin config show`: the configuration in effect, as a commented TOML file
with every setting (what the installer writes to /etc/openhosting/openhosting.toml)."""

import argparse

from openhosting.config import Config
from openhosting.config_sample import render_sample


def cmd_config_show(config: Config, _args: argparse.Namespace) -> str:
    return render_sample(config)


def add_parsers(areas: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `config` commands to the admin tool's parser."""
    config = areas.add_parser("config", help="the configuration")
    commands = config.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "show",
        help="print the configuration in effect (file, OH_* variables, --state-dir) as"
        " commented TOML with every setting; defaults are commented out",
    )
    # Reads no state: works before the platform has any.
    show.set_defaults(run_on_state=cmd_config_show)
