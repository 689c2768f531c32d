"""What the control plane takes from an agent that answers wrongly (a bug, another version,
or a host taken over): a call answered with no `answer` is a `HypervisorError` naming the host,
as any bad answer is, and a malformed message on the event stream breaks that stream only:
the driver follows again and hears the next events. An agent of host hv-a's certificate,
served in-process over the real mutual TLS, answers what each case needs."""

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from openhosting.agent.pki import agent_context, control_context
from openhosting.hypervisor.calls import encode
from openhosting.hypervisor.driver import VmEvent, VmEventKind
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.remote_driver import RemoteHypervisorDriver
from openhosting.hypervisor.spec import HostVmSettings
from testbed.agent_process import Cluster, make_cluster

# A call's method → its answer: a value (sent as `{"answer": value}`), bytes (sent as the
# body), or (status, bytes).
Answer = Callable[[str], object]
SERVER = str(uuid.uuid4())


def _settings() -> object:
    return encode(HostVmSettings(accelerator="tcg", vnc_listen="", vnc_tls_dir=Path("/none")))


async def hostile_agent(
    cluster: Cluster, answer: Answer, events: list[list[str]]
) -> AsyncIterator[str]:
    """Host hv-a's agent answering each call (`/calls/`, `/storage/`, `/cache/`) as
    `answer(method)` says, and on its n-th event stream sending the texts of `events[n]`
    after its hello; yields its address."""
    streams = iter(events)

    async def call(request: web.Request) -> web.StreamResponse:
        body = answer(request.match_info["method"])
        status = 200
        if isinstance(body, tuple):
            status, body = body
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, content_type="application/json")
        return web.json_response({"answer": body})

    async def follow(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"hello": True})
        for text in next(streams, []):
            await ws.send_str(text)
        async for _message in ws:  # until the control plane goes
            pass
        return ws

    app = web.Application()
    for area in ("calls", "storage", "cache"):
        app.router.add_post(f"/{area}/{{method}}", call)
    app.router.add_get("/events", follow)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        site = web.SockSite(runner, listening, ssl_context=agent_context(cluster.host("hv-a")))
        await site.start()
        try:
            yield f"127.0.0.1:{listening.getsockname()[1]}"
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return make_cluster(tmp_path_factory.mktemp("cluster"))


def _driver(cluster: Cluster, address: str) -> RemoteHypervisorDriver:
    return RemoteHypervisorDriver("hv-a", address, control_context(cluster.control))


@pytest.mark.parametrize("body", [b"{}", b"[1]", b"not json", b'{"answer"'])
async def test_a_call_answered_without_an_answer_is_a_hypervisor_error_naming_the_host(
    cluster: Cluster, body: bytes
) -> None:
    def answer(method: str) -> object:
        return body if method == "host_settings" else None

    async for address in hostile_agent(cluster, answer, []):
        driver = _driver(cluster, address)
        # Before, a KeyError or TypeError escaped the driver: at a daemon's start, through
        # every host's connection, it stopped the daemon.
        with pytest.raises(HypervisorError, match="hv-a"):
            await driver.connect()
        await driver.close()


async def test_a_malformed_event_breaks_the_stream_which_is_followed_again(
    cluster: Cluster,
) -> None:
    def answer(method: str) -> object:
        return _settings() if method == "host_settings" else str(Path("/run/oh"))

    exited = VmEvent(SERVER, VmEventKind.EXITED)
    good = json.dumps({"seq": 1, "event": encode(exited)})
    events: list[list[str]] = [["not json"], ["[1]"], ['{"seq": 1}'], [good]]
    heard: list[VmEvent] = []

    async for address in hostile_agent(cluster, answer, events):
        driver = _driver(cluster, address)
        driver.listen(lambda event: asyncio.sleep(0, heard.append(event)))  # type: ignore[func-returns-value]
        await driver.connect()
        try:
            for _ in range(100):  # bounded: 3 reconnections at 1 s, at most 10 s
                if heard:
                    break
                await asyncio.sleep(0.1)
            assert [(e.server, e.kind) for e in heard] == [(SERVER, VmEventKind.EXITED)]
        finally:
            await driver.close()
