"""`POST /host/drain/NAME` on the operator listener (what `openhosting-admin host drain`
asks): an unknown host is 404 naming it, a host with nothing running answers no line, and
callers from elsewhere than loopback are refused. Moving real servers: tests/services/
test_server_moves.py (fakes) and tests/cluster/test_host_drain.py (agents over QEMU)."""

import asyncio
from unittest import mock
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from openhosting.api.ops import STATE_DIR_HEADER, build_ops_app, host_drain
from openhosting.services.platform import Platform


async def test_a_drain_names_a_registered_host(
    client: TestClient,
    platform: Platform,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    ops = await aiohttp_client(TestServer(build_ops_app(client.server.app)))
    missing = await ops.post("/host/drain/hv-nowhere")
    assert missing.status == 404 and "hv-nowhere" in await missing.text()
    platform.hosts.register()
    here = await ops.post(f"/host/drain/{platform.hosts.name}")
    assert here.status == 200 and await here.text() == ""  # nothing runs: nothing to move


async def test_a_drain_is_refused_to_callers_from_elsewhere(client: TestClient) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("203.0.113.7", 40000) if name == "peername" else default
    )
    request = make_mocked_request(
        "POST", "/host/drain/hv-a", app=build_ops_app(client.server.app), transport=transport
    )
    with pytest.raises(web.HTTPForbidden):
        await asyncio.wait_for(host_drain(request), 5)


@pytest.mark.parametrize("path", ["/host/suspend", "/host/resume", "/host/drain/hv-a"])
async def test_a_caller_meaning_another_platform_is_refused_before_anything_is_done(
    client: TestClient,
    platform: Platform,
    aiohttp_client,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    done: list[str] = []

    async def record(*args: object) -> dict[str, str]:
        done.append(path)
        return {}

    for name in ("suspend_all", "resume_all", "drain"):
        monkeypatch.setattr(platform.servers, name, record)
    ops = await aiohttp_client(TestServer(build_ops_app(client.server.app)))
    elsewhere = quote("/srv/other platform/state")
    refused = await ops.post(path, headers={STATE_DIR_HEADER: elsewhere})
    assert refused.status == 409
    assert await refused.text() == (
        f"this openhostingd serves the platform in {platform.config.state_path.resolve()},"
        " not the one in /srv/other platform/state\n"
    )
    assert done == []
    ours = quote(str(platform.config.state_path.resolve()))
    assert (await ops.post(path, headers={STATE_DIR_HEADER: ours})).status == 200
    assert (await ops.post(path)).status == 200  # a tool that does not say: taken at its word
    assert done == [path, path]
