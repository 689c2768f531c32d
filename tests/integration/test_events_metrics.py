"""The event feed and the metrics on real QEMU and a real daemon: a server's status change
reaches an open `/events` stream within a second, and a scrape of the daemon's metrics
listener shows what runs."""

import time
import urllib.request
from pathlib import Path

from aiohttp.test_utils import TestClient

from testbed.daemon_process import running_daemon
from tests.api.event_stream import EventReader
from tests.api.test_metrics import samples
from tests.integration.server_helpers import create_server

BODY = "name watched\ncpu 1000\nmem 128\npersistent true\n"


async def test_a_status_change_reaches_the_stream_within_a_second(
    client: TestClient, auth: dict[str, str], servers_cleanup: None
) -> None:
    server = (await create_server(client, auth, BODY, stopped=True))["server"]
    response = await client.get("/events", headers=auth)
    events = EventReader(response)
    assert (await client.post(f"/servers/{server}/start", headers=auth)).status == 204
    _, active, received = await events.until(
        lambda data: data["object"] == server and data.get("status") == "active", 30
    )
    assert received - active["at"] < 1.0
    assert active["start_seconds"] > 0
    assert (await client.post(f"/servers/{server}/stop", headers=auth)).status == 204
    _, stopped, received = await events.until(
        lambda data: data["object"] == server and data.get("status") == "stopped", 30
    )
    assert received - stopped["at"] < 1.0
    response.close()


def test_the_daemon_serves_metrics_health_and_readiness_apart_from_the_api(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as daemon:
        base = daemon.process.metrics_url
        for path, expected in (("/health", b"ok\n"), ("/ready", b"ready\n")):
            with urllib.request.urlopen(base + path, timeout=10) as answer:
                assert answer.status == 200 and answer.read() == expected
        request = urllib.request.Request(f"{daemon.url}/drives/list")
        request.add_header("Authorization", daemon.auth_header)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and answer.headers["X-Request-Id"]
        deadline = time.monotonic() + 10
        while True:  # the access is counted once its answer has gone
            with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
                found = samples(answer.read().decode())
            key = (("method", "GET"), ("route", "/drives/list"), ("status", "200"))
            if found.get(("openhosting_http_requests_total", key)) == 1:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
