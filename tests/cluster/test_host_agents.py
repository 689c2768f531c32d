"""Servers run through the agents of their hosts: an API daemon on PostgreSQL and two real
`openhosting-agent` processes on loopback over the fake driver (mutual TLS), each host
registered with `openhosting-admin host set NAME --agent HOST:PORT`.

Drives kept apart by `avoid` land on the two agents' hosts; each server starts on the host
of its boot drive (the agent holding its VM says so, the other does not) and its info says
`host`; a stop goes to that agent. An agent killed: its server's calls fail naming the host,
its info still answers; the agent back on its port: the daemon adopts its servers' VMs again
(the fake's VMs died with its process: the server is reconciled as stopped). A boot drive on
a host with no agent connected is 507 naming the host. Over a real QEMU agent (TCG), the VM
outlives its agent's SIGKILL and the agent back is made to hold it again.
"""

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import psycopg
import pytest

from openhosting.agent.pki import Bundle, add_host, control_bundle, control_context, init_cluster
from testbed.agent_process import AgentProcess, agent_process
from testbed.cluster import host_list, run_admin
from testbed.daemon_process import Api, DaemonProcess, create_user
from testbed.leftovers import vm_run_directory

WAIT = 20.0  # seconds, at most, for the daemon to notice an agent gone or back
HEARTBEAT_SECONDS = 1
OFFLINE_SECONDS = 3  # short, for the test: a busy machine's beats still come in time
AGENT_MHZ = 1111  # the agents' hosts' core MHz, which only they know


class Hosts:
    """The daemon's state directory, its environment, the agents' bundles and processes."""

    def __init__(self, work: Path, url: str, stack: ExitStack) -> None:
        self.work, self.url, self.stack = work, url, stack
        self.state = work / "state"
        self.env = {
            "OH_STORE_URL": url,
            "OH_HOST_NAME": "zz-api",  # after the agents' hosts: ties go to them
            "OH_HYPERVISOR_DRIVER": "fake",
            "OH_HOST_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "OH_HOST_OFFLINE_SECONDS": str(OFFLINE_SECONDS),
        }
        self.account = create_user(self.state, env=self.env)
        init_cluster(self.state)
        self.context = control_context(control_bundle(self.state))
        self.agents: dict[str, AgentProcess] = {}
        self.run_dirs: dict[str, Path] = {}

    def start_agent(
        self, name: str, listen: str = "127.0.0.1:0", driver: str = "fake"
    ) -> AgentProcess:
        bundle_dir = self.work / f"bundle-{name}"
        if not bundle_dir.exists():
            add_host(self.state, name, bundle_dir)
        bundle = Bundle.in_directory(bundle_dir, "host")
        env = {"OH_HYPERVISOR_CORE_MHZ": str(AGENT_MHZ)}  # not the API node's: reported
        if driver == "qemu":
            # Short (QEMU's sockets), the same for a restarted agent; after the agent's stop
            # (which lets its VMs run on) whatever QEMU it left is killed.
            if name not in self.run_dirs:
                self.run_dirs[name] = self.stack.enter_context(vm_run_directory("oh-hq-"))
            env["OH_HYPERVISOR_RUN_DIR"] = str(self.run_dirs[name])
        agent = self.stack.enter_context(
            agent_process(
                self.work / f"agent-{name}", bundle, listen=listen, driver=driver, env=env
            )
        )
        self.agents[name] = agent
        return agent

    def admin(self, *args: str) -> str:
        return run_admin(self.state, self.env, *args)

    def host_list(self) -> dict[str, dict[str, str]]:
        return host_list(self.state, self.env)

    def ask_agent(self, name: str, call: str) -> list[str]:
        """The answer of the agent of host `name` to `call` (one with no arguments, such as
        `held`), asked of it directly (mutual TLS)."""

        async def ask() -> list[str]:
            async with aiohttp.ClientSession() as session, session.post(
                f"https://{self.agents[name].address}/calls/{call}",
                data=b"{}\n", ssl=self.context, server_hostname=name,
            ) as response:  # fmt: skip
                assert response.status == 200, await response.text()
                answer: list[str] = json.loads(await response.read())["answer"]
                return answer

        return asyncio.run(ask())

    def held(self, name: str) -> list[str]:
        """The VMs the agent of host `name` holds."""
        return sorted(self.ask_agent(name, "held"))

    def api_over_qemu_agents(self, *names: str) -> tuple[DaemonProcess, Api, Path]:
        """QEMU agents for the hosts `names`, and an API daemon whose own host takes no
        server (fake VMs, more MHz than the agents report: it would win every placement):
        that daemon, a client of it, and its log."""
        for name in names:
            agent = self.start_agent(name, driver="qemu")
            self.admin("host", "set", name, "--agent", agent.address)
        no_room = {**self.env, "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30)}
        log = self.work / "daemon.log"
        daemon = DaemonProcess(self.state, log, env=no_room)
        self.stack.callback(daemon.stop)
        return daemon, Api(self.account, daemon.url, timeout=60), log

    def query(self, statement: str, *params: object) -> None:
        with psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql")) as db:
            db.execute(statement, params)  # type: ignore[arg-type]


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str) -> Iterator[Hosts]:
    with ExitStack() as stack:
        yield Hosts(tmp_path, postgres_url, stack)


def wait_for(check: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # bounded
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {WAIT} s: {log.read_text()[-3000:]}")


def test_servers_run_on_the_agents_of_their_boot_drives_hosts(hosts: Hosts) -> None:
    for name in ("hv-a", "hv-b"):
        agent = hosts.start_agent(name)
        shown = hosts.admin("host", "set", name, "--agent", agent.address)
        assert f"agent {agent.address}" in shown, shown
    daemon = DaemonProcess(hosts.state, hosts.work / "daemon.log", env=hosts.env)
    hosts.stack.callback(daemon.stop)
    api, log = Api(hosts.account, daemon.url), hosts.work / "daemon.log"

    # Each agent described its own host (the API node's MHz is another), recorded on connect.
    listed = hosts.host_list()
    for name in ("hv-a", "hv-b"):
        assert (listed[name]["state"], listed[name]["cpu:core_mhz"]) == ("online", "1111")
    assert listed["zz-api"]["cpu:core_mhz"] != "1111"

    # Drives kept apart by avoid: on the two agents' hosts.
    d1 = api.properties("/drives/create", b"name one\nsize 1M\n")["drive"]
    d2 = api.properties("/drives/create", f"name two\nsize 1M\navoid {d1}\n".encode())["drive"]
    assert api.properties(f"/drives/{d1}/info")["host"] == "hv-a"
    assert api.properties(f"/drives/{d2}/info")["host"] == "hv-b"

    # Each server starts on its boot drive's host: that agent holds its VM, not the other.
    servers = {}
    for host, drive in (("hv-a", d1), ("hv-b", d2)):
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        servers[host] = api.properties("/servers/create/stopped", body.encode())["server"]
        started = api.call(f"/servers/{servers[host]}/start", b"")
        assert started.status == 204, started
    s1, s2 = servers["hv-a"], servers["hv-b"]
    assert hosts.held("hv-a") == [s1]
    assert hosts.held("hv-b") == [s2]
    for host, server in servers.items():
        info = api.properties(f"/servers/{server}/info")
        assert (info["status"], info["host"]) == ("active", host)

    # A stop goes to the server's own agent.
    assert api.call(f"/servers/{s1}/stop", b"").status == 204
    assert hosts.held("hv-a") == []
    assert hosts.held("hv-b") == [s2]
    assert api.properties(f"/servers/{s1}/info")["status"] == "stopped"

    # hv-b's agent killed: offline once silent for host.offline_seconds; its server's info
    # says so with its last known status, its commands are 503 failed naming the host, and
    # the drives' placement leaves the host out.
    address = hosts.agents["hv-b"].address
    os.kill(hosts.agents["hv-b"].pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: api.properties(f"/servers/{s2}/info").get("host:state") == "offline",
        "the server's host offline",
        log,
    )
    assert time.monotonic() - killed < OFFLINE_SECONDS + 2 * HEARTBEAT_SECONDS + 2
    info = api.properties(f"/servers/{s2}/info")
    assert (info["status"], info["host"]) == ("active", "hv-b")
    assert api.properties(f"/drives/{d2}/info")["host:state"] == "offline"
    assert hosts.host_list()["hv-b"]["state"] == "offline"
    for command in ("stop", "reset"):
        refused = api.call(f"/servers/{s2}/{command}", b"")
        assert refused.status == 503, refused
        assert refused.headers.get("X-Elastic-Error") == "failed", refused
        assert "Host hv-b is offline" in refused.body.decode(), refused
    apart = api.properties("/drives/create", f"name x\nsize 1M\navoid {d1}\n".encode())
    assert apart["host"] != "hv-b"

    # Back on its port: online again, and the daemon adopts its servers' VMs again. The
    # fake's VM died with the agent's process: the server is reconciled as after a daemon
    # restart.
    hosts.start_agent("hv-b", listen=address)
    wait_for(
        lambda: api.properties(f"/servers/{s2}/info")["status"] == "stopped",
        "the server of the restarted agent reconciled",
        log,
    )
    wait_for(lambda: hosts.host_list()["hv-b"]["state"] == "online", "hv-b online", log)
    assert "host:state" not in api.properties(f"/servers/{s2}/info")

    # A boot drive on a host no agent of which is connected here: 507 naming it.
    hosts.query("UPDATE drives SET host = 'hv-gone' WHERE uuid = %s", d1)
    refused = api.call(f"/servers/{s1}/start", b"")
    assert refused.status == 507, refused
    assert refused.headers.get("X-Elastic-Error") == "full", refused
    assert "hv-gone" in refused.body.decode(), refused


def test_a_vm_outlives_its_agents_kill_and_is_adopted_when_the_agent_is_back(
    hosts: Hosts,
) -> None:
    agent = hosts.start_agent("hv-q", driver="qemu")
    hosts.admin("host", "set", "hv-q", "--agent", agent.address)
    daemon = DaemonProcess(hosts.state, hosts.work / "daemon.log", env=hosts.env)
    hosts.stack.callback(daemon.stop)
    api, log = Api(hosts.account, daemon.url), hosts.work / "daemon.log"
    drive = api.properties("/drives/create", b"name q\nsize 1M\n")["drive"]
    body = f"name q\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
    server = api.properties("/servers/create/stopped", body.encode())["server"]
    started = api.call(f"/servers/{server}/start", b"")
    assert started.status == 204, started
    assert hosts.held("hv-q") == [server]
    try:
        os.kill(agent.pid, signal.SIGKILL)
        wait_for(lambda: "event=host_agent_down host=hv-q" in log.read_text(), "agent down", log)
        hosts.start_agent("hv-q", listen=agent.address, driver="qemu")
        wait_for(lambda: hosts.held("hv-q") == [server], "the VM adopted again", log)
        wait_for(lambda: hosts.host_list()["hv-q"]["state"] == "online", "hv-q online", log)
        info = api.properties(f"/servers/{server}/info")
        assert (info["status"], info["host"]) == ("active", "hv-q")
        assert "host:state" not in info
    finally:
        api.call(f"/servers/{server}/stop", b"")
    assert hosts.held("hv-q") == []
    assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
