"""A server start cut by a fault in the cluster: two API daemons on PostgreSQL and one real
`openhosting-agent` over the fake driver (mutual TLS), whose next start the test makes slow.

API node A is SIGKILLed while the agent starts the VM it asked for: the agent's VM runs on,
held by the agent, and the server's drive stays claimed, for a start nobody will answer. Once
A's operation lease has run out, node B (looking at the agent every heartbeat) undoes it: the
VM is stopped, the claims released, the server left `stopped`, and it starts again through B.
"""

import asyncio
import http.client
import os
import signal
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import aiohttp
import psycopg

from testbed.daemon_process import Api, DaemonProcess
from tests.cluster.test_host_agents import Hosts

LEASE_SECONDS = 2  # host.operation_lease_seconds: short, for the test
START_DELAY = 4.0  # seconds the agent's next start takes
WAIT = 30.0


def _fault(hosts: Hosts, name: str, fault: str, body: object) -> None:
    async def post() -> None:
        async with aiohttp.ClientSession() as session, session.post(
            f"https://{hosts.agents[name].address}/faults/{fault}",
            json=body, ssl=hosts.context, server_hostname=name,
        ) as response:  # fmt: skip
            assert response.status == 200, await response.text()

    asyncio.run(post())


def _rows(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as db:
        return db.execute(statement, params).fetchall()  # type: ignore[arg-type]


def _wait_for(check: object, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # bounded
        if callable(check) and check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)
    raise AssertionError(f"{what} within {WAIT} s:\n{tails}")


def test_a_start_whose_api_node_died_is_undone_by_another_node(
    tmp_path: Path, postgres_url: str
) -> None:
    with ExitStack() as stack:
        hosts = Hosts(tmp_path, postgres_url, stack)
        agent = hosts.start_agent("hv-a")
        hosts.admin("host", "set", "hv-a", "--agent", agent.address)
        # The API nodes' own host takes no server (no memory): every start goes to hv-a.
        env = {
            **hosts.env,
            "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30),
            "OH_HOST_OPERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "agent-hv-a" / "agent.log"]
        node_a = DaemonProcess(hosts.state, logs[0], env=env)
        stack.callback(node_a.stop)
        node_b = DaemonProcess(hosts.state, logs[1], env=env)
        stack.callback(node_b.stop)
        api_a, api_b = Api(hosts.account, node_a.url), Api(hosts.account, node_b.url)

        drive = api_a.properties("/drives/create", b"name d\nsize 1M\n")["drive"]
        assert api_a.properties(f"/drives/{drive}/info")["host"] == "hv-a"
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        server = api_a.properties("/servers/create/stopped", body.encode())["server"]

        # A's start reaches the agent, which takes START_DELAY to run the VM; A dies meanwhile.
        _fault(hosts, "hv-a", "delay_next_start", {"seconds": START_DELAY})
        starting = threading.Thread(
            target=lambda: _call_quietly(api_a, f"/servers/{server}/start"), daemon=True
        )
        asked = time.monotonic()
        starting.start()
        _wait_for(
            lambda: _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive),
            "A's start claimed the drive",
            logs,
        )
        time.sleep(0.5)  # its call to the agent under way
        node_a.end(signal.SIGKILL)
        starting.join(timeout=WAIT)

        # The agent ran the VM nobody will hold as the server's (before, it ran on, and the
        # server's own claims made its next start 409 `in use (guest S)`, for good); B undoes
        # the start once A's lease has run out: no VM, no claim, the server stopped (it was
        # never active).
        time.sleep(max(0.0, asked + START_DELAY + 0.5 - time.monotonic()))  # the VM runs
        _wait_for(lambda: hosts.held("hv-a") == [], "the dead start's VM stopped", logs)
        assert f"event=server_orphan_stopped server={server} host=hv-a" in logs[1].read_text()
        _wait_for(
            lambda: not _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive),
            "the dead start's claims released",
            logs,
        )
        assert api_b.properties(f"/servers/{server}/info")["status"] == "stopped"
        assert "claimed" not in api_b.properties(f"/drives/{drive}/info")

        # And it starts again, through B, on the agent.
        started = api_b.call(f"/servers/{server}/start", b"")
        assert started.status == 204, started
        assert hosts.held("hv-a") == [server]
        assert api_b.properties(f"/servers/{server}/info")["status"] == "active"
        assert api_b.call(f"/servers/{server}/stop", b"").status == 204
        assert hosts.held("hv-a") == []


def _call_quietly(api: Api, path: str) -> None:
    """A call whose daemon is killed under it: how it ends does not matter."""
    with suppress(OSError, http.client.HTTPException):
        api.call(path, b"")


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
    tmp_path: Path, postgres_url: str
) -> None:
    with ExitStack() as stack:
        hosts = Hosts(tmp_path, postgres_url, stack)
        agent = hosts.start_agent("hv-a")
        hosts.admin("host", "set", "hv-a", "--agent", agent.address)
        env = {
            **hosts.env,
            "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30),
            "OH_HOST_OPERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        logs = [tmp_path / "a.log", tmp_path / "agent-hv-a" / "agent.log"]
        node = DaemonProcess(hosts.state, logs[0], env=env)
        stack.callback(node.stop)
        api = Api(hosts.account, node.url)
        drive = api.properties("/drives/create", b"name d\nsize 1M\n")["drive"]
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        server = api.properties("/servers/create/stopped", body.encode())["server"]

        # The database goes while the agent runs the VM: the start cannot record it active,
        # nor release its claims.
        _fault(hosts, "hv-a", "delay_next_start", {"seconds": START_DELAY})
        answers: list[object] = []
        starting = threading.Thread(
            target=lambda: answers.append(api.call(f"/servers/{server}/start", b"")), daemon=True
        )
        starting.start()
        _wait_for(
            lambda: _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive),
            "the start claimed the drive",
            logs,
        )
        _database_connections(postgres_url, allowed=False)
        try:
            starting.join(timeout=WAIT)
        finally:
            _database_connections(postgres_url, allowed=True)
        (answer,) = answers
        assert getattr(answer, "status", None) == 503, answer
        assert getattr(answer, "headers", {}).get("X-Elastic-Error") == "failed", answer
        assert hosts.held("hv-a") == []  # the start killed its VM

        # Back: the claims the start could not release are released (before, they stayed,
        # and every later start was 409 `in use (guest S)`), and the server starts.
        _wait_for(
            lambda: not _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive),
            "the failed start's claims released",
            logs,
        )
        assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
        started = api.call(f"/servers/{server}/start", b"")
        assert started.status == 204, started
        assert hosts.held("hv-a") == [server]
        assert api.call(f"/servers/{server}/stop", b"").status == 204


def test_a_start_whose_agent_dies_is_503_naming_the_host_and_leaves_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    with ExitStack() as stack:
        hosts = Hosts(tmp_path, postgres_url, stack)
        agent = hosts.start_agent("hv-a")
        hosts.admin("host", "set", "hv-a", "--agent", agent.address)
        env = {**hosts.env, "OH_HOST_MEMORY_RESERVE_MB": str(1 << 30)}
        logs = [tmp_path / "a.log", tmp_path / "agent-hv-a" / "agent.log"]
        node = DaemonProcess(hosts.state, logs[0], env=env)
        stack.callback(node.stop)
        api = Api(hosts.account, node.url)
        drive = api.properties("/drives/create", b"name d\nsize 1M\n")["drive"]
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        server = api.properties("/servers/create/stopped", body.encode())["server"]

        _fault(hosts, "hv-a", "delay_next_start", {"seconds": START_DELAY})
        answers: list[object] = []
        starting = threading.Thread(
            target=lambda: answers.append(api.call(f"/servers/{server}/start", b"")), daemon=True
        )
        starting.start()
        _wait_for(
            lambda: _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive),
            "the start claimed the drive",
            logs,
        )
        time.sleep(0.5)  # its call to the agent under way
        os.kill(agent.pid, signal.SIGKILL)
        starting.join(timeout=WAIT)
        (answer,) = answers
        assert getattr(answer, "status", None) == 503, answer
        assert getattr(answer, "headers", {}).get("X-Elastic-Error") == "failed", answer
        assert "hv-a" in getattr(answer, "body", b"").decode(), answer
        assert not _rows(hosts.url, "SELECT 1 FROM claims WHERE drive = %s", drive)
        assert api.properties(f"/servers/{server}/info")["status"] == "stopped"
        # While the host is away its start is 503 naming it, at once; back, it starts.
        refused = api.call(f"/servers/{server}/start", b"")
        assert (refused.status, refused.headers.get("X-Elastic-Error")) == (503, "failed")
        assert "hv-a" in refused.body.decode(), refused
        hosts.start_agent("hv-a", listen=agent.address)
        _wait_for(
            lambda: api.call(f"/servers/{server}/start", b"").status == 204,
            "a start once the agent is back",
            logs,
        )
        assert hosts.held("hv-a") == [server]
        assert api.call(f"/servers/{server}/stop", b"").status == 204
