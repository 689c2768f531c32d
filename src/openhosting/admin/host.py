"""`openhosting-admin host list|set|drain|suspend|resume|add`: the platform's hosts, and host
maintenance (a kernel update, a reboot).

`list` shows every registered host: its capacity (cores and their MHz, memory less the
host's reserve, the size of each tier's file system), what is placed on it (the cpu and mem
of its active servers, the sizes of its drives per tier) and its state (`offline` when its
last heartbeat is older than `host.offline_seconds`).

`set NAME --agent HOST:PORT` records where host NAME's agent listens (an empty address: none);
a daemon started afterwards connects to it and runs the VMs of servers placed there through
it. A host not registered yet is registered with no capacity, offline until a daemon reaches
its agent, which then reports what its host offers at each heartbeat. `set NAME --vxlan-local
ADDR` records the host's VXLAN underlay address: every other host floods its VLANs' frames to
it while it is online.

`drain NAME` moves every running server of host NAME to other hosts with room, by live
migration, one at a time (docs/cluster.md, 'host drain'): each line of the output is a server
and `moved HOST`, or why it did not move (it runs on where it was); exit 1 if any did not.
The running daemon does it (it holds the agents' connections), asked on its operator
listener as for `suspend`.

`suspend` saves every active server's memory and device state to an encrypted dump in the
state directory and ends its VM: those servers are `dumped`, their drives still claimed.
`resume` restores each dumped server where it was (its guest runs on, it does not boot).

The daemon holds each VM's one QMP connection and would apply the stop rules to a VM that
ends under it, so when it runs it does the work itself: the tool asks it on its operator
listener (`api.metrics_listen`, loopback callers only), naming the state directory it means:
a daemon of another platform there refuses. When nothing answers there, the tool holds the
VMs itself for the time of the command, as the daemon would.
"""

import argparse
import asyncio
import http.client
import urllib.parse
from typing import Any

from openhosting.admin import cluster as admin_cluster
from openhosting.api.ops import STATE_DIR_HEADER
from openhosting.config import Config
from openhosting.daemon import parse_listen
from openhosting.errors import FailedError, UsageError
from openhosting.services.cluster.hosts import HostView
from openhosting.services.platform import Platform, open_platform
from openhosting.wire.payload import PropertiesList, Value
from openhosting.wire.text import render_text

# Saving or restoring every guest of a host takes a while: bounded, but generously.
DAEMON_TIMEOUT = 3600.0
_DONE = {"suspend": "dumped", "resume": "active"}


def ask_daemon(config: Config, action: str, name: str = "") -> dict[str, str] | None:
    """The daemon's outcome of `action` (on host `name`, for a drain), or None when no daemon
    answers on its listener."""
    if not config.api.metrics_listen:
        return None
    host, port = parse_listen(config.api.metrics_listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    connection = http.client.HTTPConnection(host, port, timeout=DAEMON_TIMEOUT)
    # Whoever listens there may be another platform's daemon (two on one host, one of them
    # told another metrics address): it refuses what is not meant for it.
    meant = urllib.parse.quote(str(config.state_path.resolve()))
    try:
        # The name quoted whole: as typed, `hv-a?x` or `hv-a#2` named hv-a to the daemon.
        path = f"/host/{action}" + (f"/{urllib.parse.quote(name, safe='')}" if name else "")
        connection.request("POST", path, headers={STATE_DIR_HEADER: meant})
        response = connection.getresponse()
        body = response.read().decode()
    except ConnectionRefusedError:
        return None
    except OSError as error:
        raise FailedError(f"openhostingd at {host}:{port} did not answer: {error}") from None
    finally:
        connection.close()
    if response.status == 409:
        raise FailedError(
            f"The openhostingd on {config.api.metrics_listen} (api.metrics_listen) is another"
            f" platform's: {body.strip()}. Name this platform's metrics address: the --config"
            " its daemon reads, or OH_API_METRICS_LISTEN as its daemon was given it"
        )
    if response.status != 200:
        raise FailedError(f"openhostingd refused host {action}: {body.strip()}")
    outcome: dict[str, str] = {}
    for line in body.splitlines():
        uuid, _, text = line.partition(" ")
        outcome[uuid] = text
    return outcome


async def run_here(config: Config, action: str) -> dict[str, str]:
    """Do `action` in this process: no daemon runs (or none listens for the operator)."""
    platform = open_platform(config)
    try:
        servers = platform.servers
        unreachable = await servers.adopt_for_maintenance()
        try:
            done = await (servers.suspend_all() if action == "suspend" else servers.resume_all())
        finally:
            await servers.close()  # restored VMs run on, for the daemon to adopt
    finally:
        platform.close()
    return {**unreachable, **done} if action == "suspend" else done


def cmd_host(config: Config, args: argparse.Namespace) -> str:
    outcome = ask_daemon(config, args.command)
    if outcome is None:
        outcome = asyncio.run(run_here(config, args.command))
    text = "".join(f"{uuid} {result}\n" for uuid, result in outcome.items())
    failed = [uuid for uuid, result in outcome.items() if result != _DONE[args.command]]
    if failed:
        raise FailedError(f"{text}host {args.command}: {len(failed)} server(s) not done")
    return text


def cmd_host_drain(config: Config, args: argparse.Namespace) -> str:
    outcome = ask_daemon(config, "drain", args.name)
    if outcome is None:
        raise FailedError(
            "host drain: no openhostingd answers on api.metrics_listen; the running daemon"
            " moves the servers (it holds the agents' connections)"
        )
    text = "".join(f"{uuid} {result}\n" for uuid, result in outcome.items())
    failed = [uuid for uuid, result in outcome.items() if not result.startswith("moved ")]
    if failed:
        raise FailedError(f"{text}host drain: {len(failed)} server(s) not moved, running on")
    return text


def host_properties(view: HostView) -> dict[str, Value]:
    """What `host list` shows of one host."""
    load = view.load
    capacity = load.capacity
    properties: dict[str, Value] = {
        "host": load.name,
        "state": view.state,
        # A host recorded (`host set`) whose agent never answered has had no heartbeat: its
        # age would be the seconds since 1970.
        "heartbeat:age": int(view.heartbeat_age) if view.record.heartbeat_at > 0 else "never",
        "agent": view.record.agent,
        "vxlan_local": view.record.vxlan_local,
        "cpu:cores": capacity.cores,
        "cpu:core_mhz": capacity.core_mhz,
        "cpu": capacity.cores * capacity.core_mhz,
        "cpu:used": load.used_mhz,
        "mem": capacity.memory_mb,
        "mem:used": load.used_memory_mb,
    }
    for tier in sorted(set(capacity.disk_bytes_by_tier) | set(load.used_bytes_by_tier)):
        properties[f"disk:{tier}"] = capacity.disk_bytes_by_tier.get(tier, 0)
        properties[f"disk:{tier}:used"] = load.used_bytes_by_tier.get(tier, 0)
    return properties


def cmd_host_list(platform: Platform, _args: argparse.Namespace) -> str:
    views = platform.hosts.overview()
    return render_text(PropertiesList([host_properties(view) for view in views]))


def cmd_host_set(platform: Platform, args: argparse.Namespace) -> str:
    if args.agent is None and args.vxlan_local is None:
        raise UsageError("host set: give --agent, --vxlan-local or both")
    record = None
    if args.agent is not None:
        record = platform.hosts.set_agent(args.name, args.agent)
    if args.vxlan_local is not None:
        record = platform.hosts.set_vxlan_local(args.name, args.vxlan_local)
    assert record is not None
    shown: dict[str, Value] = {
        "host": record.name,
        "agent": record.agent,
        "vxlan_local": record.vxlan_local,
    }
    return render_text(PropertiesList([shown]))


def add_parsers(areas: Any) -> None:
    """Add the `host` area to the admin tool's parser."""
    host = areas.add_parser("host", help="the platform's hosts, host maintenance")
    commands = host.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list", help="every host: capacity, use and state (last heartbeat's age)"
    ).set_defaults(run=cmd_host_list)
    set_host = commands.add_parser(
        "set", help="record the address of a host's agent, or its VXLAN underlay address"
    )
    set_host.add_argument("name", help="the host's name (as in its certificate)")
    set_host.add_argument(
        "--agent", help="HOST:PORT its openhosting-agent listens on ('' for none)"
    )
    set_host.add_argument(
        "--vxlan-local",
        help="its VXLAN underlay address, where the other hosts send its VLANs ('' for none)",
    )
    set_host.set_defaults(run=cmd_host_set)
    commands.add_parser(
        "suspend", help="save every active server's state to disk and end its VM (dumped)"
    ).set_defaults(run_on_state=cmd_host)
    commands.add_parser("resume", help="restore every dumped server where it was").set_defaults(
        run_on_state=cmd_host
    )
    drain = commands.add_parser(
        "drain", help="move every running server of a host to other hosts (live migration)"
    )
    drain.add_argument("name", help="the host to empty")
    drain.set_defaults(run_on_state=cmd_host_drain)
    admin_cluster.add_host_parser(commands)
