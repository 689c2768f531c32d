"""Two hosts in bridge mode, as the cluster tests drive them: a network namespace per host,
cabled to a "fabric" namespace twice, once for the underlay (testbed/cluster.py's `cable`:
each host's `eth0`, the agents' and migrations' addresses, VXLAN between the hosts) and once
for the provider's public L2 (a second fabric bridge, `pub0`, with each host's public bridge
`oh-public` on it through a veth `pub`, made here as an operator makes it with the uplink in
it). The fabric namespace holds a public address of its own (`OUTSIDE`): what the test asks
from there is what a machine on the provider's network sees. One `openhosting-agent` over
QEMU (TCG) runs in each host's namespace, in bridge mode; the API daemon runs in the root
namespace on the test's PostgreSQL and takes no server itself.

Every step's undo is on the caller's ExitStack (namespaces deleted with their links, the
agents stopped by PID, the QEMU they left killed).
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

from openhosting.agent.pki import Bundle, add_host, init_cluster
from openhosting.reverter import Reverter
from testbed.agent_process import AgentProcess, agent_process
from testbed.cluster import AGENT_PORT, Topology, cable, run_admin
from testbed.daemon_process import BIN, Api, DaemonProcess, create_user
from testbed.leftovers import vm_run_directory

PUBLIC_BRIDGE = "oh-public"
# The pool is the default one (192.0.2.0/24, range .10-.250); these are outside its range.
OUTSIDE = "192.0.2.5"  # the fabric's own address on the public L2
HOST_ADDRESSES = {"hv1": "192.0.2.2", "hv2": "192.0.2.3"}  # each host's on its public bridge


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class BridgeHosts:
    """The namespaces, the agents of hosts hv1 and hv2 and the API daemon (`api`)."""

    def __init__(self, work: Path, url: str, stack: ExitStack) -> None:
        self.work, self.stack = work, stack
        # Names and the underlay /24 of this process's own: a `make cluster` or another
        # test run beside it keeps its namespaces.
        tag = os.getpid() % 100
        self.topology = Topology(prefix=f"ohbr{tag}-", subnet=f"10.244.{tag}", hosts=2)
        self.fabric = self.topology.fabric
        self.state = work / "state"
        self.env = {
            "OH_STORE_URL": url,
            "OH_HOST_NAME": "zz-api",  # after the agents' hosts: ties go to them
            "OH_HYPERVISOR_DRIVER": "fake",
            # The API node's own host takes no server (its fake VMs have no network).
            "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30),
            "OH_HOST_HEARTBEAT_SECONDS": "1",
            "OH_HOST_OFFLINE_SECONDS": "5",
        }
        self.account = create_user(self.state, env=self.env)
        init_cluster(self.state)
        # The namespaces' undos (cable's, the root's veth among them) run when the stack
        # closes, whether the start got that far or failed half-way.
        undo = Reverter()
        stack.callback(undo.fail)
        cable(self.topology, undo)
        self._public_l2()
        self.run_dirs: dict[str, Path] = {}
        self.agents: dict[str, AgentProcess] = {}
        for host in self.topology.names:
            self.agents[host] = self._agent(host)
            address = self.topology.address(host)
            self.admin("host", "set", host, "--agent", f"{address}:{AGENT_PORT}",
                       "--vxlan-local", address)  # fmt: skip
        self.daemon = DaemonProcess(self.state, work / "daemon.log", env=self.env)
        stack.callback(self.daemon.stop)
        self.api = Api(self.account, self.daemon.url, timeout=60)

    def _public_l2(self) -> None:
        """Bridge `pub0` in the fabric, each host's `oh-public` on it, `OUTSIDE` on it too
        (the namespaces' deletion takes all of it)."""
        fabric = self.fabric
        ip("-n", fabric, "link", "add", "pub0", "type", "bridge")
        ip("-n", fabric, "addr", "add", f"{OUTSIDE}/24", "dev", "pub0")
        ip("-n", fabric, "link", "set", "pub0", "up")
        for host in self.topology.names:
            namespace = self.topology.namespace(host)
            ip("-n", namespace, "link", "add", PUBLIC_BRIDGE, "type", "bridge")
            ip("-n", namespace, "link", "add", "pub", "type", "veth",
               "peer", "name", f"p{host}", "netns", fabric)  # fmt: skip
            ip("-n", namespace, "link", "set", "pub", "master", PUBLIC_BRIDGE, "up")
            ip("-n", namespace, "link", "set", PUBLIC_BRIDGE, "up")
            ip("-n", fabric, "link", "set", f"p{host}", "master", "pub0", "up")

    def _agent(self, host: str) -> AgentProcess:
        bundle_dir = self.work / f"bundle-{host}"
        add_host(self.state, host, bundle_dir)
        address = self.topology.address(host)
        # Short (QEMU's sockets); whatever QEMU the agent leaves is killed after its stop.
        self.run_dirs[host] = self.stack.enter_context(vm_run_directory("oh-br-"))
        env = {
            "OH_HYPERVISOR_RUN_DIR": str(self.run_dirs[host]),
            "OH_HYPERVISOR_CORE_MHZ": "1111",
            "OH_HYPERVISOR_MIGRATION_ADDRESS": address,
            "OH_NETWORK_MODE": "bridge",
            "OH_NETWORK_HOST_ADDRESS": HOST_ADDRESSES[host],
            "OH_NETWORK_LEASE_SECONDS": "120",
            "OH_NETWORK_VXLAN_LOCAL": address,
            "OH_NETWORK_VXLAN_DEVICE": "eth0",
        }
        return self.stack.enter_context(
            agent_process(
                self.work / f"agent-{host}",
                Bundle.in_directory(bundle_dir, "host"),
                driver="qemu",
                listen=f"{address}:{AGENT_PORT}",
                netns=self.topology.namespace(host),
                env=env,
            )
        )

    def admin(self, *args: str) -> str:
        return run_admin(self.state, self.env, *args)

    def console(self, host: str, server: str) -> Path:
        """The serial console socket of `server` running on `host`."""
        return self.run_dirs[host] / server / "console.sock"

    def serial_log(self, host: str, server: str) -> Path:
        return self.run_dirs[host] / server / "serial.log"

    def in_fabric(self, *command: str, timeout: float = 30) -> str:
        """The output of `command` run in the fabric namespace (on the public L2)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.fabric, *command],
            check=True, capture_output=True, text=True, timeout=timeout,
        ).stdout  # fmt: skip


def drain_argv(hosts: BridgeHosts, host: str) -> tuple[list[str], dict[str, str]]:
    """`openhosting-admin host drain HOST` and its environment (the daemon's metrics)."""
    env = {
        **os.environ,
        **hosts.env,
        "OH_API_METRICS_LISTEN": f"127.0.0.1:{hosts.daemon.metrics_port}",
    }
    argv = [str(BIN / "openhosting-admin"), "--state-dir", str(hosts.state), "host", "drain", host]
    return argv, env
