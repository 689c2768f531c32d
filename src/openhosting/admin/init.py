"""`openhosting-admin init`: make a new platform's state directory and database and its first
user, and print the `export OHURI=… OHAUTH=…` lines to reach the API with (once: a platform
that has users gets another only when asked)."""

import argparse
import sys

from openhosting.daemon import first_user_message
from openhosting.services.platform import Platform


def cmd_init(platform: Platform, args: argparse.Namespace) -> str:
    # open_platform has already made the state directory, the platform key and the database.
    if platform.accounts.has_users() and not args.another:
        print(
            f"openhosting-admin: the platform in {platform.config.state_dir} has users"
            " already; no user created (`init --another` creates one more)",
            file=sys.stderr,
        )
        return ""
    key = platform.accounts.create_user(args.name)
    return first_user_message(platform.config, key)


def add_parsers(areas: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `init` command to the admin tool's parser."""
    init = areas.add_parser(
        "init",
        help="create the state directory, the database and a first user; print its export lines",
        description="Run once on a new host, before or after the daemon first starts. The"
        " secret is printed this once, to standard output only.",
    )
    init.add_argument("--name", default="first user", help="the new user's name")
    init.add_argument(
        "--another", action="store_true", help="create a user even if the platform has some"
    )
    init.set_defaults(run=cmd_init, makes_platform=True)
