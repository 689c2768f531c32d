"""A cluster on one machine (`make cluster`, and the tests and benchmarks that need one): a
PostgreSQL of its own, the cluster CA and one bundle per host, a "fabric" network namespace
whose bridge cables together one namespace per host and the root namespace, one
`openhosting-agent` per host namespace listening on its fabric address, and one API daemon
in the root namespace (its API on loopback, as `make run`'s) on the PostgreSQL.

    fabric namespace (PREFIXfabric): bridge fabric0, no address
      ├─ veth ── root namespace   PREFIXfabric ↔ root: SUBNET.1/24    (the API daemon)
      ├─ veth ── PREFIXhv1        eth0: SUBNET.11/24, agent on :7430
      ├─ veth ── PREFIXhv2        eth0: SUBNET.12/24
      └─ veth ── PREFIXhv3        eth0: SUBNET.13/24

Every step registers its undo (one `Reverter`): `stop` ends what was started, by PID, and
deletes the namespaces (their veths go with them) and the temporary directories; a start that
fails half-way undoes what it did. Also what the cluster tests share: the admin tool on a
state directory and database (`run_admin`), `host list` as a dict (`host_list`).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from openhosting.agent.pki import Bundle, add_host, init_cluster
from openhosting.reverter import Reverter
from openhosting.wire.text import parse_properties
from testbed.agent_process import AgentProcess, agent_process
from testbed.daemon_process import BIN, Account, DaemonProcess, create_user
from testbed.leftovers import kill_leftover_vms
from testbed.postgres import PostgresServer

T = TypeVar("T")
AGENT_PORT = 7430
BRIDGE = "fabric0"
IP_TIMEOUT = 10.0


def run_admin(state: Path, env: Mapping[str, str], *args: str) -> str:
    """`openhosting-admin --state-dir STATE ARGS` with `env` added (the database's URL); its
    standard output (CalledProcessError when it fails)."""
    return subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, **env},
    ).stdout  # fmt: skip


def host_list(state: Path, env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`openhosting-admin host list`: each host's name → its properties."""
    blocks = run_admin(state, env, "host", "list").strip().split("\n\n")
    listed = [parse_properties(block) for block in blocks if block]
    return {properties["host"]: properties for properties in listed}


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run `calls` together, one thread each; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


@dataclass(frozen=True)
class Topology:
    """Names and addresses: namespaces `PREFIXfabric` and `PREFIXhv1`…, the /24 `SUBNET.0`
    (a private range used only on these veths: `10.243.0` by default)."""

    prefix: str = "oh-"
    subnet: str = "10.243.0"
    hosts: int = 3

    def __post_init__(self) -> None:
        # Interface names are at most 15 bytes: the root's veth is PREFIX + "fabric".
        if len(self.prefix) > 9 or not self.prefix.replace("-", "").isalnum():
            raise ValueError(f"a prefix of letters, digits and '-', 9 at most: {self.prefix!r}")
        if not 1 <= self.hosts <= 9:
            raise ValueError("1 to 9 hosts")

    @property
    def fabric(self) -> str:
        return f"{self.prefix}fabric"

    @property
    def names(self) -> list[str]:
        return [f"hv{index}" for index in range(1, self.hosts + 1)]

    def namespace(self, host: str) -> str:
        return f"{self.prefix}{host}"

    @property
    def root_address(self) -> str:
        return f"{self.subnet}.1"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{10 + int(host.removeprefix('hv'))}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT)


def namespaces() -> set[str]:
    """The network namespaces of this machine, by name."""
    listed = subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=IP_TIMEOUT
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def cable(topology: Topology, revert: Reverter) -> None:
    """The fabric namespace and its bridge, each host's namespace cabled to it by a veth
    (`eth0` inside, the host's name on the bridge), the root namespace too; each step's
    undo in `revert` (a namespace deleted takes its veths, and their peers, with it)."""
    taken = namespaces() & {topology.fabric, *map(topology.namespace, topology.names)}
    if taken:
        raise RuntimeError(f"network namespaces already there: {sorted(taken)}")
    fabric = topology.fabric
    _ip("netns", "add", fabric)
    revert.add(functools.partial(_ip, "netns", "delete", fabric))
    _ip("-n", fabric, "link", "add", BRIDGE, "type", "bridge")
    _ip("-n", fabric, "link", "set", BRIDGE, "up")
    for host in topology.names:
        namespace = topology.namespace(host)
        _ip("netns", "add", namespace)
        revert.add(functools.partial(_ip, "netns", "delete", namespace))
        _ip("-n", namespace, "link", "set", "lo", "up")  # QEMU's and VNC's loopback
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", host, "netns", fabric)  # fmt: skip
        _ip("-n", namespace, "addr", "add", f"{topology.address(host)}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", fabric, "link", "set", host, "master", BRIDGE, "up")
    # The root namespace's end keeps the fabric's name (unique among the root's links).
    _ip("link", "add", fabric, "type", "veth", "peer", "name", "root", "netns", fabric)
    revert.add(functools.partial(_quietly, "link", "delete", fabric))  # gone with the fabric
    _ip("addr", "add", f"{topology.root_address}/24", "dev", fabric)
    _ip("link", "set", fabric, "up")
    _ip("-n", fabric, "link", "set", "root", "master", BRIDGE, "up")


def _quietly(*args: str) -> None:
    subprocess.run(["ip", *args], check=False, capture_output=True, timeout=IP_TIMEOUT)


def _entered(context: AbstractContextManager[T], revert: Reverter) -> T:
    """The value of `context`, entered; its exit registered as an undo in `revert`."""
    value = context.__enter__()
    revert.add(functools.partial(context.__exit__, None, None, None))
    return value


class LocalCluster:
    """The cluster of `topology` in the directory `work` (removed by `stop`), its
    agents and API daemon over `driver` (`qemu`, or `fake` for tests); the API on
    127.0.0.1:`port` (a free one unless given). Started when made."""

    def __init__(
        self,
        work: Path,
        topology: Topology | None = None,
        *,
        driver: str = "qemu",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.work = work
        self.topology = topology or Topology()
        self.driver = driver
        self.agents: dict[str, AgentProcess] = {}
        self._undo = Reverter()  # what `stop` runs: every step started, in reverse
        with Reverter() as failed:
            failed.add(self._undo.fail)
            self._start(port, dict(env or {}))
            failed.success()

    def _start(self, port: int | None, extra_env: dict[str, str]) -> None:
        undo, topology = self._undo, self.topology
        self.work.mkdir(parents=True, exist_ok=True)
        undo.add(functools.partial(shutil.rmtree, self.work, ignore_errors=True))
        self.postgres = PostgresServer()
        undo.add(self.postgres.stop)
        self.url = self.postgres.url(self.postgres.new_database())
        self.state = self.work / "state"
        self.env = {
            "OH_STORE_URL": self.url,
            "OH_HOST_NAME": "api",
            "OH_HYPERVISOR_DRIVER": self.driver,
            **extra_env,
        }
        self.account: Account = create_user(self.state, env=self.env)
        init_cluster(self.state)
        bundles = {}
        for host in topology.names:
            add_host(self.state, host, self.work / f"bundle-{host}")
            bundles[host] = Bundle.in_directory(self.work / f"bundle-{host}", "host")
        at_once([
            functools.partial(
                run_admin, self.state, self.env,
                "host", "set", host, "--agent", f"{topology.address(host)}:{AGENT_PORT}",
            )
            for host in topology.names
        ])  # fmt: skip
        cable(topology, undo)
        runs = {host: self._run_directory(f"ohcl-{host}-") for host in topology.names}
        # Side by side (each waits until its agent listens); each one's stop registered.
        started = at_once([
            functools.partial(
                _entered,
                agent_process(
                    self.work / host, bundles[host], driver=self.driver,
                    listen=f"{topology.address(host)}:{AGENT_PORT}",
                    netns=topology.namespace(host),
                    env={
                        "OH_HYPERVISOR_RUN_DIR": str(runs[host]),
                        # Where its migrations and its drives' NBD exports listen.
                        "OH_HYPERVISOR_MIGRATION_ADDRESS": topology.address(host),
                        **extra_env,
                    },
                ),
                undo,
            )
            for host in topology.names
        ])  # fmt: skip
        self.agents = dict(zip(topology.names, started, strict=True))
        self.env["OH_HYPERVISOR_RUN_DIR"] = str(self._run_directory("ohcl-api-"))
        self.daemon = DaemonProcess(self.state, self.work / "api.log", port=port, env=self.env)
        undo.add(self.daemon.stop)

    def _run_directory(self, prefix: str) -> Path:
        """A short run directory for VMs (unix socket paths), whose leftovers `stop` kills
        and which it removes."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        path.chmod(0o755)  # QEMU may run as another user
        self._undo.add(functools.partial(kill_leftover_vms, path))
        return path

    @property
    def url_of_api(self) -> str:
        return f"{self.daemon.url}/"

    def pids(self) -> list[int]:
        """The processes started: PostgreSQL, the agents, the API daemon."""
        assert self.postgres.process is not None
        return [self.postgres.process.pid, *(a.pid for a in self.agents.values()), self.daemon.pid]

    def exports(self) -> str:
        """The two lines to paste into a shell, as `make run` prints them."""
        return f"export OHURI={self.url_of_api}\nexport OHAUTH={self.account.auth}\n"

    def stop(self) -> None:
        """Everything started ended (by PID), the namespaces and directories gone."""
        self._undo.fail()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make cluster", description="A cluster of hosts in network namespaces, here."
    )
    parser.add_argument("--port", type=int, default=8080, help="the API's loopback port")
    parser.add_argument("--hosts", type=int, default=3, help="how many hosts (1 to 9)")
    parser.add_argument("--prefix", default="oh-", help="of the network namespaces' names")
    parser.add_argument("--subnet", default="10.243.0", help="the fabric's /24, as A.B.C")
    parser.add_argument("--driver", default="qemu", help="the agents' hypervisor driver")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make cluster: network namespaces need root", file=sys.stderr)
        return 2
    # SIGTERM unwinds as Ctrl-C does: the cluster's stop runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    topology = Topology(args.prefix, args.subnet, args.hosts)
    work = Path(tempfile.mkdtemp(prefix="oh-cluster-"))
    try:
        cluster = LocalCluster(work, topology, driver=args.driver, port=args.port)
    except KeyboardInterrupt:  # what was started is stopped already
        return 130
    try:
        hosts = ", ".join(f"{h} {topology.address(h)}" for h in topology.names)
        print(f"A cluster of {topology.hosts} hosts ({hosts}) on PostgreSQL, its API daemon at"
              f" {cluster.url_of_api} (log {cluster.daemon.log}). Use the API with:")  # fmt: skip
        print(cluster.exports(), end="")
        print(f"pids {' '.join(map(str, cluster.pids()))}")
        print("Ctrl-C stops it and removes everything it made.", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the stop short: it would leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
