"""The operator's listener: `/metrics` after a scripted workload has the expected counts,
`/health` answers, `/ready` tells whether the daemon serves."""

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openhosting.api.context import READINESS_KEY
from openhosting.api.metrics import PlatformMetrics
from openhosting.api.ops import build_ops_app
from tests.api.drive_helpers import create_drive


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def ops_client(client: TestClient, aiohttp_client) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(TestServer(build_ops_app(client.server.app)))


async def test_a_scrape_counts_requests_failures_and_state(
    client: TestClient,
    auth: dict[str, str],
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    ops = await ops_client(client, aiohttp_client)
    for size in (1000, 2000, 3000):
        await create_drive(client, auth, size)
    await create_drive(client, auth, 500, tier="ssd")
    for _ in range(2):
        assert (await client.get("/drives/list", headers=auth)).status == 200
    bad = {"Authorization": "Basic bm90OnZhbGlk"}  # not:valid
    assert (await client.get("/drives/list", headers=bad)).status == 401
    assert (await client.get("/nothing/here", headers=auth)).status == 404
    await client.post("/servers/create/stopped", data="name s\ncpu 1000\nmem 256", headers=auth)

    response = await ops.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    found = samples(await response.text())
    list_ok = (("method", "GET"), ("route", "/drives/list"), ("status", "200"))
    assert found[("openhosting_http_requests_total", list_ok)] == 2
    denied = (("method", "GET"), ("route", "/drives/list"), ("status", "401"))
    assert found[("openhosting_http_requests_total", denied)] == 1
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert found[("openhosting_http_requests_total", unmatched)] == 1
    created = (("method", "POST"), ("route", "/drives/create"), ("status", "200"))
    assert found[("openhosting_http_requests_total", created)] == 4
    assert (
        found[("openhosting_http_request_duration_seconds_count", (("route", "/drives/list"),))]
        == 3
    )
    assert found[("openhosting_auth_failures_total", ())] == 1
    assert found[("openhosting_drives", (("tier", "disk"),))] == 3
    assert found[("openhosting_drives", (("tier", "ssd"),))] == 1
    assert found[("openhosting_drive_bytes", (("tier", "disk"),))] == 6000
    assert found[("openhosting_servers", (("status", "stopped"),))] == 1
    assert found[("openhosting_servers", (("status", "active"),))] == 0
    assert found[("openhosting_imaging_jobs", (("state", "queued"),))] == 0
    assert found[("openhosting_drive_transfers_in_flight", ())] == 0
    assert found[("openhosting_events_total", (("change", "created"), ("type", "drive")))] == 4
    assert found[("openhosting_host_capacity", (("resource", "cpu_mhz"),))] > 0
    assert found[("openhosting_host_capacity_used", (("resource", "cpu_mhz"),))] == 0
    # ssd shares disk's directory unless configured: one file system, reported for each.
    disk_fs = found[("openhosting_tier_bytes", (("tier", "disk"),))]
    assert disk_fs > 0 and found[("openhosting_tier_bytes", (("tier", "ssd"),))] == disk_fs
    assert found[("openhosting_tier_bytes_used", (("tier", "ssd"),))] > 0


async def test_every_answer_carries_a_request_id(client: TestClient, auth: dict[str, str]) -> None:
    ids = set()
    for path in ("/drives/list", "/nothing", "/drives/create"):
        response = await client.get(path, headers=auth)
        request_id = response.headers["X-Request-Id"]
        assert len(request_id) == 16 and int(request_id, 16) >= 0
        ids.add(request_id)
    assert len(ids) == 3


async def test_health_answers_and_ready_follows_the_daemon(
    client: TestClient,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    ops = await ops_client(client, aiohttp_client)
    assert (await ops.get("/health")).status == 200
    assert (await ops.get("/ready")).status == 503  # not yet told it serves
    client.server.app[READINESS_KEY].set()
    response = await ops.get("/ready")
    assert response.status == 200 and await response.text() == "ready\n"


def test_request_counts_stay_exact_for_any_number_of_label_combinations() -> None:
    metrics = PlatformMetrics()
    # Unknown methods are the client's to choose: many combinations, each counted.
    methods = [f"M{index}" for index in range(5000)]
    for method in [*methods, *methods]:
        metrics.observe_request("/drives/list", method, 200, 0.001)
    metrics.observe_request("/drives/list", "GET", 404, 0.001)
    found = samples(generate_latest(metrics.registry).decode())
    key = (
        "openhosting_http_requests_total",
        (("method", methods[-1]), ("route", "/drives/list"), ("status", "200")),
    )
    assert found[key] == 2
    assert (
        found[("openhosting_http_request_duration_seconds_count", (("route", "/drives/list"),))]
        == 2 * len(methods) + 1
    )


def test_request_latencies_fall_in_the_buckets_at_most_their_bound() -> None:
    metrics = PlatformMetrics()
    for seconds in (0.0005, 0.001, 0.0011, 0.3, 31.0):
        metrics.observe_request("/drives/list", "GET", 200, seconds)
    found = samples(generate_latest(metrics.registry).decode())

    def bucket(le: str) -> float:
        return found[
            (
                "openhosting_http_request_duration_seconds_bucket",
                (("le", le), ("route", "/drives/list")),
            )
        ]

    assert bucket("0.001") == 2  # a value equal to the bound is in its bucket
    assert bucket("0.0025") == 3
    assert bucket("0.25") == 3
    assert bucket("0.5") == 4
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    assert found[
        ("openhosting_http_request_duration_seconds_sum", (("route", "/drives/list"),))
    ] == pytest.approx(31.3026)


def test_a_routes_own_counts_taken_at_start_up_are_what_a_scrape_shows() -> None:
    """Each route's handler holds its counts from start-up (no lookup by route per request):
    what it counts is scraped under its route, and a route not asked yet shows nothing."""
    metrics = PlatformMetrics()
    listing = metrics.requests.of_route("/drives/list")
    assert metrics.requests.of_route("/drives/list") is listing
    metrics.requests.of_route("/servers/list")  # taken, never asked
    listing.observe("GET", 200, 0.002)
    metrics.observe_request("/drives/list", "GET", 200, 0.002)
    found = samples(generate_latest(metrics.registry).decode())
    assert (
        found[
            (
                "openhosting_http_requests_total",
                (("method", "GET"), ("route", "/drives/list"), ("status", "200")),
            )
        ]
        == 2
    )
    assert not any(("route", "/servers/list") in labels for _, labels in found)
