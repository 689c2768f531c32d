"""Mutual TLS between the control plane and a real `openhosting-agent` on loopback (over the
fake driver): only the control plane's certificate gets a driver call, refused ones change
nothing, and the control plane talks to a host's agent only if it proves to be that host's."""

import asyncio
import json
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path

import pytest

from openhosting.agent.pki import Bundle, agent_context, control_context
from openhosting.hypervisor.calls import encode
from openhosting.hypervisor.driver import StartRequest, VmEvent, VmEventKind, VmState
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from openhosting.hypervisor.spec import VmSpec
from testbed.agent_process import AgentProcess, Cluster, agent_process, make_cluster


def _start_line() -> bytes:
    spec = VmSpec(str(uuid.uuid4()), 1, 64, Path("/nonexistent"))
    return json.dumps(encode(StartRequest(spec))).encode() + b"\n"


def _client_context(ca: Path, bundle: Bundle | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if bundle is not None:
        context.load_cert_chain(bundle.cert, bundle.key)
    return context


def _post_start(agent: AgentProcess, context: ssl.SSLContext) -> int | None:
    """The HTTP status of a start sent with `context`'s certificate; None if the TLS
    handshake refused it (plain sockets, to see the refusal as it is)."""
    host, _, port = agent.address.rpartition(":")
    body = _start_line()
    head = (
        f"POST /calls/start HTTP/1.1\r\nHost: hv-a\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    answer = b""
    try:
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="hv-a") as tls,
        ):
            tls.sendall(head.encode() + body)
            while chunk := tls.recv(4096):
                answer += chunk
    except (ssl.SSLError, ConnectionError):
        return None  # the agent's alert, or its closing the connection
    return int(answer.split(b" ", 2)[1]) if answer else None


async def _held(cluster: Cluster, agent: AgentProcess) -> list[str]:
    driver = RemoteHypervisorDriver("hv-a", agent.address, control_context(cluster.control))
    await driver.connect()
    try:
        return await driver.unheld() + driver.held()
    finally:
        await driver.close()


async def test_the_control_plane_drives_the_agent_and_hears_its_events(
    cluster: Cluster, agent_a: AgentProcess
) -> None:
    driver = RemoteHypervisorDriver("hv-a", agent_a.address, control_context(cluster.control))
    events: list[VmEvent] = []

    async def record(event: VmEvent) -> None:
        events.append(event)

    driver.listen(record)
    await driver.connect()
    try:
        spec = VmSpec(str(uuid.uuid4()), 1, 64, driver.run_dir("x").parent / "x")
        spec = VmSpec(spec.uuid, 1, 64, driver.run_dir(spec.uuid))
        status = await driver.start(StartRequest(spec))
        assert (status.server, status.state) == (spec.uuid, VmState.RUNNING)
        assert driver.held() == [spec.uuid]
        await driver.stop(spec.uuid)
        assert [(event.server, event.kind) for event in events] == [(spec.uuid, VmEventKind.EXITED)]
        assert driver.held() == []
    finally:
        await driver.close()


@pytest.mark.parametrize("who", ["no certificate", "a host's certificate", "another CA's"])
async def test_only_the_control_certificate_gets_a_driver_call(
    cluster: Cluster, agent_a: AgentProcess, tmp_path: Path, who: str
) -> None:
    ca = cluster.control.ca_cert
    if who == "no certificate":
        context = _client_context(ca, None)
    elif who == "a host's certificate":
        context = _client_context(ca, cluster.host("hv-b"))  # another agent, same CA
    else:
        stranger = make_cluster(tmp_path)
        context = _client_context(ca, stranger.control)  # says control, from another CA
    status = await asyncio.to_thread(_post_start, agent_a, context)
    # A host's certificate passes TLS (same CA) and is refused for its role; the others
    # do not get past the handshake.
    assert status == (403 if who == "a host's certificate" else None)
    assert await _held(cluster, agent_a) == []  # the refused start reached no driver


async def test_an_agent_is_trusted_only_for_its_own_host(cluster: Cluster, tmp_path: Path) -> None:
    with agent_process(tmp_path / "hv-b", cluster.host("hv-b")) as agent_b:
        # Host B's agent at the address where the control plane expects host A's.
        impostor = RemoteHypervisorDriver("hv-a", agent_b.address, control_context(cluster.control))
        with pytest.raises(HypervisorError, match=r"hv-a.*unreachable.*certificate"):
            await impostor.connect()
        genuine = RemoteHypervisorDriver("hv-b", agent_b.address, control_context(cluster.control))
        await genuine.connect()
        try:
            assert await genuine.unheld() == []
        finally:
            await genuine.close()
    # An agent of another cluster's CA is nobody's.
    stranger = make_cluster(tmp_path / "other")
    with agent_process(tmp_path / "hv-a-other", stranger.host("hv-a")) as other:
        driver = RemoteHypervisorDriver("hv-a", other.address, control_context(cluster.control))
        with pytest.raises(HypervisorError, match="certificate"):
            await driver.connect()


async def test_an_agent_that_cannot_be_reached_or_does_not_answer_is_a_clear_error(
    cluster: Cluster,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        driver = RemoteHypervisorDriver(
            "hv-a", f"127.0.0.1:{port}", control_context(cluster.control)
        )
        with pytest.raises(
            HypervisorError, match=f"hv-a at https://127.0.0.1:{port} unreachable"
        ) as refused:
            await driver.connect()
        assert (refused.value.status, refused.value.kind) == (503, "failed")

    # An agent that takes the connection (TLS and all) and never answers.
    done = threading.Event()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(10.0)
        context = agent_context(cluster.host("hv-a"))

        def hold() -> None:
            connection, _ = silent.accept()
            with context.wrap_socket(connection, server_side=True):
                done.wait(10.0)

        holding = threading.Thread(target=hold)
        holding.start()
        driver = RemoteHypervisorDriver(
            "hv-a", f"127.0.0.1:{silent.getsockname()[1]}", control_context(cluster.control),
            call_timeout=1.0,
        )  # fmt: skip
        try:
            with pytest.raises(
                HypervisorError, match="unreachable: host_settings got no answer"
            ) as refused:
                await driver.connect()
            assert refused.value.status == 503
        finally:
            done.set()
            holding.join(10.0)


async def test_an_agent_followed_by_the_control_plane_stops_at_once_on_sigterm(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Its runner waited for the follower's WebSocket until the agent was killed (15 s here),
    its VMs never let go of."""
    with agent_process(tmp_path / "hv-a", cluster.host("hv-a")) as agent:
        driver = RemoteHypervisorDriver("hv-a", agent.address, control_context(cluster.control))
        await driver.connect()
        try:
            begun = time.monotonic()
            os.kill(agent.pid, signal.SIGTERM)
            for _ in range(100):  # bounded: 10 s
                if not _alive(agent.pid):
                    break
                await asyncio.sleep(0.1)
            assert not _alive(agent.pid)
            assert time.monotonic() - begun < 5
        finally:
            await driver.close()


def _alive(pid: int) -> bool:
    """Whether the process `pid` (a child of this one) still runs: a zombie does not."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
