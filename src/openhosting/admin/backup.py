"""`openhosting-admin backup DIR`: a consistent copy of the platform's database and key, taken
while the daemon runs (see store/backup.py for what it holds and what it leaves out)."""

import argparse
from pathlib import Path

from openhosting.config import Config
from openhosting.store.backup import back_up_state, restore_state
from openhosting.store.database import sqlite_file


def cmd_backup(config: Config, args: argparse.Namespace) -> str:
    database, key = back_up_state(
        sqlite_file(config.store_url), config.platform_key_path, args.target
    )
    # Every tier's drive directory, each once (`ssd` shares `disk`'s unless configured).
    directories = " ".join(dict.fromkeys(str(path) for path in config.tier_paths.values()))
    return (
        (
            f"database {database}\n"
            if database is not None
            else "database not included: it is PostgreSQL's (store.url), back it up there"
            " (pg_dump, or base backups and WAL archiving)\n"
        )
        + f"key {key}\n"
        f"drives not included: copy {directories} with your file backups"
        " (e.g. rsync -S)\n"
    )


def cmd_restore(config: Config, args: argparse.Namespace) -> str:
    restored = restore_state(args.source, sqlite_file(config.store_url), config.platform_key_path)
    directories = " ".join(dict.fromkeys(str(path) for path in config.tier_paths.values()))
    return "".join(f"restored {path}\n" for path in restored) + (
        f"drives not restored: put the drive files back into {directories} before the daemon"
        " starts\n"
    )


def add_parsers(areas: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `backup` command to the admin tool's parser."""
    backup = areas.add_parser(
        "backup",
        help="copy the database and the platform key (not the drives) into a new directory",
        description="To restore: stop the daemon, `openhosting-admin restore DIR`, put the"
        " drive files back into each tier's drive directory, and start it.",
    )
    backup.add_argument("target", type=Path, metavar="DIR", help="a new (or empty) directory")
    # Works on the state as it is: opening the platform would create one where there is none.
    backup.set_defaults(run_on_state=cmd_backup)
    restore = areas.add_parser(
        "restore",
        help="put a backup's database and platform key back (the daemon stopped)",
        description="Replaces the state directory's database (and its write-ahead log, which"
        " would otherwise be replayed over the restored file) and platform key with the"
        " backup's. Refused while the daemon has the database open. The drive files are"
        " yours to put back.",
    )
    restore.add_argument("source", type=Path, metavar="DIR", help="a directory made by backup")
    restore.set_defaults(run_on_state=cmd_restore)
