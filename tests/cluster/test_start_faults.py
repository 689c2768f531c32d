"""A server start cut by a fault in the cluster: API daemons on PostgreSQL and one real
`openhosting-agent` over the fake driver (mutual TLS), whose next start the test makes slow
(`delay_next_start`), so that the fault comes while the agent runs the VM.

- API node A SIGKILLed: the agent's VM runs on, held by the agent, and the server's drive
  stays claimed, for a start nobody will answer. Once A's operation lease has run out, node
  B (looking at the agent every heartbeat) undoes it: the VM stopped, the claims released,
  the server left `stopped`; it starts again through B.
- The database gone (its connections ended, then refused): the start is 503 failed, its VM
  killed; the claims it could not release go once the database is back.
- The agent SIGKILLed: the start is 503 failed naming the host and leaves nothing; back, the
  server starts there.
"""

import asyncio
import http.client
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
import pytest

from testbed.daemon_process import Answer, Api, DaemonProcess
from tests.cluster.test_host_agents import Hosts

LEASE_SECONDS = 2  # host.operation_lease_seconds: short, for the test
START_DELAY = 4.0  # seconds the agent's next start takes
WAIT = 30.0


@dataclass
class Stage:
    """An agent `hv-a` over the fake driver, API daemons made by `node`, and a stopped
    server whose boot drive is on hv-a."""

    hosts: Hosts
    stack: ExitStack
    work: Path
    drive: str = ""
    server: str = ""

    def node(self, name: str) -> tuple[DaemonProcess, Api]:
        env = {
            **self.hosts.env,
            "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30),  # its own host takes no server
            "OH_HOST_OPERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        daemon = DaemonProcess(self.hosts.state, self.work / f"{name}.log", env=env)
        self.stack.callback(daemon.stop)
        return daemon, Api(self.hosts.account, daemon.url)

    def logs(self) -> list[Path]:
        return [*sorted(self.work.glob("*.log")), self.work / "agent-hv-a" / "agent.log"]

    def make_server(self, api: Api) -> None:
        self.drive = api.properties("/drives/create", b"name d\nsize 1M\n")["drive"]
        assert api.properties(f"/drives/{self.drive}/info")["host"] == "hv-a"
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {self.drive}\nboot ide:0:0\n"
        self.server = api.properties("/servers/create/stopped", body.encode())["server"]

    def claimed(self) -> bool:
        query = "SELECT 1 FROM claims WHERE drive = %s"
        with psycopg.connect(self.hosts.url.replace("postgresql+psycopg", "postgresql")) as db:
            return bool(db.execute(query, (self.drive,)).fetchall())

    def slow_start(self, api: Api) -> tuple[threading.Thread, list[Answer]]:
        """A start through `api` that the agent takes START_DELAY to run, under way once
        this returns (its claims made): its thread, and its answer once there."""
        self.fault("delay_next_start", {"seconds": START_DELAY})
        answers: list[Answer] = []

        def start() -> None:
            with suppress(OSError, http.client.HTTPException):  # its daemon may be killed
                answers.append(api.call(f"/servers/{self.server}/start", b""))

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        self.wait_for(self.claimed, "the start claimed the drive")
        return thread, answers

    def fault(self, fault: str, body: object) -> None:
        async def post() -> None:
            async with aiohttp.ClientSession() as session, session.post(
                f"https://{self.hosts.agents['hv-a'].address}/faults/{fault}",
                json=body, ssl=self.hosts.context, server_hostname="hv-a",
            ) as response:  # fmt: skip
                assert response.status == 200, await response.text()

        asyncio.run(post())

    def wait_for(self, check: object, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # bounded
            if callable(check) and check():
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- {log}\n{log.read_text()[-2500:]}" for log in self.logs())
        raise AssertionError(f"{what} within {WAIT} s:\n{tails}")

    def starts_again(self, api: Api) -> None:
        """The server starts through `api` on hv-a, and stops."""
        started = api.call(f"/servers/{self.server}/start", b"")
        assert started.status == 204, started
        assert self.hosts.held("hv-a") == [self.server]
        assert api.properties(f"/servers/{self.server}/info")["status"] == "active"
        assert api.call(f"/servers/{self.server}/stop", b"").status == 204
        assert self.hosts.held("hv-a") == []


@pytest.fixture
def stage(tmp_path: Path, postgres_url: str) -> Iterator[Stage]:
    with ExitStack() as stack:
        hosts = Hosts(tmp_path, postgres_url, stack)
        agent = hosts.start_agent("hv-a")
        hosts.admin("host", "set", "hv-a", "--agent", agent.address)
        yield Stage(hosts, stack, tmp_path)


def _refused_503(answer: Answer, naming: str) -> None:
    assert (answer.status, answer.headers.get("X-Elastic-Error")) == (503, "failed"), answer
    assert naming in answer.body.decode(), answer


def test_a_start_whose_api_node_died_is_undone_by_another_node(stage: Stage) -> None:
    node_a, api_a = stage.node("a")
    _node_b, api_b = stage.node("b")
    stage.make_server(api_a)

    # A's start reaches the agent, which takes START_DELAY to run the VM; A dies meanwhile.
    asked = time.monotonic()
    starting, _answers = stage.slow_start(api_a)
    time.sleep(0.5)  # its call to the agent under way
    node_a.end(signal.SIGKILL)
    starting.join(timeout=WAIT)

    # The agent ran the VM nobody will hold as the server's (before, it ran on, and the
    # server's own claims made its next start 409 `in use (guest S)`, for good); B undoes
    # the start once A's lease has run out: no VM, no claim, the server stopped (it was
    # never active).
    time.sleep(max(0.0, asked + START_DELAY + 0.5 - time.monotonic()))  # the VM runs
    stage.wait_for(lambda: stage.hosts.held("hv-a") == [], "the dead start's VM stopped")
    orphan = f"event=server_orphan_stopped server={stage.server} host=hv-a"
    assert orphan in (stage.work / "b.log").read_text()
    stage.wait_for(lambda: not stage.claimed(), "the dead start's claims released")
    assert api_b.properties(f"/servers/{stage.server}/info")["status"] == "stopped"
    assert "claimed" not in api_b.properties(f"/drives/{stage.drive}/info")
    stage.starts_again(api_b)


def _database_connections(url: str, allowed: bool) -> None:
    """Let the test's database take connections or not; refusing, its open ones are ended
    too (pg_terminate_backend, as a restart of PostgreSQL ends them)."""
    name = url.rsplit("/", 1)[1]
    admin = url.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allowed}")  # type: ignore[arg-type]
        if not allowed:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def test_a_start_that_lost_its_database_is_answered_503_and_leaves_no_claim(
    stage: Stage,
) -> None:
    _node, api = stage.node("a")
    stage.make_server(api)

    # The database goes while the agent runs the VM: the start cannot record it active,
    # nor release its claims.
    starting, answers = stage.slow_start(api)
    _database_connections(stage.hosts.url, allowed=False)
    try:
        starting.join(timeout=WAIT)
    finally:
        _database_connections(stage.hosts.url, allowed=True)
    (answer,) = answers
    _refused_503(answer, "database")
    assert stage.hosts.held("hv-a") == []  # the start killed its VM

    # Back: the claims the start could not release are released (before, they stayed, the
    # server held as active in the daemon's memory, and every later start was 409 `in use
    # (guest S)`), and the server starts.
    stage.wait_for(lambda: not stage.claimed(), "the failed start's claims released")
    assert api.properties(f"/servers/{stage.server}/info")["status"] == "stopped"
    # No heartbeat was written meanwhile: hv-a is offline (a start 503 naming it) until one is.
    stage.wait_for(lambda: stage.hosts.host_list()["hv-a"]["state"] == "online", "hv-a online")
    stage.starts_again(api)


def test_a_start_whose_agent_dies_is_503_naming_the_host_and_leaves_nothing(
    stage: Stage,
) -> None:
    _node, api = stage.node("a")
    stage.make_server(api)
    agent = stage.hosts.agents["hv-a"]

    starting, answers = stage.slow_start(api)
    time.sleep(0.5)  # its call to the agent under way
    os.kill(agent.pid, signal.SIGKILL)
    starting.join(timeout=WAIT)
    (answer,) = answers
    _refused_503(answer, "hv-a")
    assert not stage.claimed()
    assert api.properties(f"/servers/{stage.server}/info")["status"] == "stopped"
    # While the host is away its start is 503 naming it, at once; back, it starts.
    _refused_503(api.call(f"/servers/{stage.server}/start", b""), "hv-a")
    stage.hosts.start_agent("hv-a", listen=agent.address)
    # Each command waits for the node's own look to find the agent back (one heartbeat).
    for command in ("start", "stop"):
        stage.wait_for(
            lambda path=f"/servers/{stage.server}/{command}": api.call(path, b"").status == 204,
            f"a {command} once the agent is back",
        )
        assert stage.hosts.held("hv-a") == ([stage.server] if command == "start" else [])
