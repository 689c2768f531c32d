"""`openhosting-admin standard …` and `openhosting-admin jobs …`: the standard drive library
and the imaging jobs, for the operator. Output is the API's text form."""

import argparse
import math
import time
from pathlib import Path

from openhosting.admin.arguments import limit_argument
from openhosting.errors import UsageError
from openhosting.services.drives.imaging import SECONDS_PER_DAY
from openhosting.services.platform import Platform
from openhosting.store.jobs import STATES
from openhosting.store.records import JobRecord
from openhosting.wire.payload import Properties, PropertiesList, Value
from openhosting.wire.text import render_text


def cmd_standard_add(platform: Platform, args: argparse.Namespace) -> str:
    info = platform.standard_drives.add(args.file, args.name, args.media, args.gzip)
    return render_text(Properties(info))


def cmd_standard_list(platform: Platform, _args: argparse.Namespace) -> str:
    return render_text(PropertiesList(platform.standard_drives.info_all()))


def cmd_standard_remove(platform: Platform, args: argparse.Namespace) -> str:
    platform.standard_drives.remove(args.uuid)
    return ""


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def job_properties(job: JobRecord) -> dict[str, Value]:
    """A job as the operator reads it."""
    values: dict[str, Value] = {
        "job": job.id,
        "state": job.state,
        "user": job.user,
        "drive": job.dst,
        "source": job.src,
        "conversion": job.conversion or "none",
        "bytes:done": job.bytes_done,
        "bytes:total": job.bytes_total,
        "created": _when(job.created_at),
    }
    if job.started_at is not None:
        values["started"] = _when(job.started_at)
    if job.ended_at is not None:
        values["ended"] = _when(job.ended_at)
    if job.error:
        values["error"] = job.error
    return values


def cmd_jobs_list(platform: Platform, args: argparse.Namespace) -> str:
    jobs = platform.imaging.list_jobs(args.state, args.limit)
    return render_text(PropertiesList([job_properties(job) for job in jobs]))


def cmd_jobs_prune(platform: Platform, args: argparse.Namespace) -> str:
    if not math.isfinite(args.older_than) or args.older_than < 0:
        raise UsageError("--older-than must be 0 or more days")
    count = platform.imaging.prune(time.time() - args.older_than * SECONDS_PER_DAY)
    return f"pruned {count}\n"


def add_parsers(areas: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `standard` and `jobs` areas to the admin tool's parser."""
    standard = areas.add_parser("standard", help="the standard drive library")
    commands = standard.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="store an image file as a read-only standard drive")
    add.add_argument("file", type=Path, help="the image file (raw, or gzip with --gzip)")
    add.add_argument("--name", required=True)
    add.add_argument("--media", choices=("disk", "cdrom"), default="disk")
    add.add_argument(
        "--gzip",
        action="store_true",
        help="FILE is a gzip image: stored as it is, users image it with /gunzip",
    )
    add.set_defaults(run=cmd_standard_add, makes_platform=True)
    commands.add_parser("list", help="list standard drives").set_defaults(run=cmd_standard_list)
    remove = commands.add_parser("remove", help="remove a standard drive")
    remove.add_argument("uuid", type=str.lower)
    remove.set_defaults(run=cmd_standard_remove)

    jobs = areas.add_parser("jobs", help="imaging jobs")
    job_commands = jobs.add_subparsers(dest="command", required=True)
    listing = job_commands.add_parser("list", help="list imaging jobs, newest first")
    listing.add_argument("--state", choices=STATES, help="only jobs in this state")
    listing.add_argument(
        "--limit", type=limit_argument, default=100, help="at most this many (100)"
    )
    listing.set_defaults(run=cmd_jobs_list)
    prune = job_commands.add_parser("prune", help="delete the rows of jobs that ended long ago")
    prune.add_argument(
        "--older-than",
        type=float,
        required=True,
        metavar="DAYS",
        help="jobs that ended more than DAYS days ago (0: every ended job)",
    )
    prune.set_defaults(run=cmd_jobs_prune)
