"""What Prometheus scrapes: the API's traffic, the platform's state and the host's capacity.

Traffic (requests by route and status, latency, authentication failures) is counted as it
happens; state (servers by status, drives and bytes by tier, imaging jobs by state, transfers
under way, capacity used) is read when scraped, so it is never stale and costs nothing in
between. One registry per application, not the library's global one: several platforms may
live in one process (the tests).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from openhosting.services.events import Event
from openhosting.services.platform_state import PlatformState

# Latency buckets from a cached info (~1 ms) to a drive transfer's first byte under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A VM's start: QEMU up and QMP answering, from well under a second (KVM) to many (TCG).
VM_START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
UNMATCHED = "unmatched"  # the route label of a path that is no command (404)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class StateGauge(NamedTuple):
    """A gauge of the platform's state, by one label: its figures are read when scraped."""

    name: str
    help: str
    label: str
    figures: Callable[[PlatformState], Mapping[str, int]]


STATE_GAUGES = (
    StateGauge(
        "openhosting_servers",
        "Servers, by status.",
        "status",
        lambda state: state.servers_by_status,
    ),
    StateGauge(
        "openhosting_drives", "Drives, by tier.", "tier", lambda state: state.drives_by_tier
    ),
    StateGauge(
        "openhosting_drive_bytes",
        "Drives' provisioned sizes in bytes, by tier.",
        "tier",
        lambda state: state.drive_bytes_by_tier,
    ),
    StateGauge(
        "openhosting_imaging_jobs",
        "Imaging jobs, by state.",
        "state",
        lambda state: state.jobs_by_state,
    ),
    StateGauge(
        "openhosting_host_capacity_used",
        "What this host's active servers and drives use: cpu_mhz, mem_mb, disk_bytes.",
        "resource",
        lambda state: state.capacity_used,
    ),
    StateGauge(
        "openhosting_host_capacity",
        "What this host has: cpu_mhz (cores × core_mhz), mem_mb, disk_bytes.",
        "resource",
        lambda state: state.capacity_total,
    ),
    StateGauge(
        "openhosting_tier_bytes_used",
        "Bytes used on each storage tier's file system.",
        "tier",
        lambda state: state.tier_bytes_used,
    ),
    StateGauge(
        "openhosting_tier_bytes",
        "Size in bytes of each storage tier's file system.",
        "tier",
        lambda state: state.tier_bytes_total,
    ),
)


class RouteCounts:
    """One route's requests by method and status, and how many fell in each latency bucket
    (the last: past the largest bound) with the sum of their seconds."""

    __slots__ = ("buckets", "counts", "seconds")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int | str], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, method: str, status: int | str, seconds: float) -> None:
        key = (method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le`: at most it
        self.seconds += seconds


class RequestCounts(Collector):
    """The API's requests by route, method and status, and their latency by route: counted
    in plain objects on the event loop and handed to the registry only when it is scraped.
    (prometheus_client's `inc` and `observe` lock and look up their child on every call:
    3 µs of a cheap request's ~60.) Each route's handler holds its own RouteCounts, taken at
    start-up (`of_route`): no lookup by route per request."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteCounts] = {}

    def of_route(self, route: str) -> RouteCounts:
        """The counts of `route` (made the first time)."""
        counts = self._routes.get(route)
        if counts is None:
            counts = self._routes[route] = RouteCounts()
        return counts

    def observe(self, route: str, method: str, status: int | str, seconds: float) -> None:
        self.of_route(route).observe(method, status, seconds)

    def collect(self) -> Iterator[Metric]:
        routes = [(route, counts) for route, counts in list(self._routes.items()) if counts.counts]
        requests = CounterMetricFamily(
            "openhosting_http_requests",
            "API requests answered, by route (the command's URL pattern), method and status.",
            labels=["route", "method", "status"],
        )
        for route, counts in routes:
            for (method, status), count in list(counts.counts.items()):
                requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "openhosting_http_request_duration_seconds",
            "Time from a request's arrival to its answer's start, by route.",
            labels=["route"],
        )
        bounds = [*(str(float(bound)) for bound in LATENCY_BUCKETS), "+Inf"]
        for route, counts in routes:
            cumulative = list(itertools.accumulate(counts.buckets))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), counts.seconds)
        yield latency


class PlatformMetrics:
    """The metrics of one daemon."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = RequestCounts()
        registry.register(self.requests)
        self.auth_failures = Counter(
            "openhosting_auth_failures",
            "Requests refused for their credentials (missing, wrong, malformed or throttled).",
            registry=registry,
        )
        self.vm_start = Histogram(
            "openhosting_vm_start_seconds",
            "Time to start a server's VM (QEMU spawned until it runs and answers QMP).",
            buckets=VM_START_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            "openhosting_events",
            "State changes published on the event feed, by object type and change.",
            ["type", "change"],
            registry=registry,
        )
        self.event_streams = Gauge(
            "openhosting_event_streams", "Clients connected to /events.", registry=registry
        )
        self.transfers = Gauge(
            "openhosting_drive_transfers_in_flight",
            "Drive reads and writes under way.",
            registry=registry,
        )
        # The state's gauges, each set from its figures at every scrape.
        self.state_gauges = [
            (Gauge(gauge.name, gauge.help, [gauge.label], registry=registry), gauge.figures)
            for gauge in STATE_GAUGES
        ]

    def observe_request(self, route: str, method: str, status: int | str, seconds: float) -> None:
        self.requests.observe(route, method, status, seconds)

    def observe_event(self, event: Event) -> None:
        """A listener of the event feed: counts events and times VM starts."""
        self.events.labels(event.type, event.change).inc()
        seconds = event.fields.get("start_seconds")
        if isinstance(seconds, int | float):
            self.vm_start.observe(seconds)

    def render(self, state: PlatformState, transfers: int, event_streams: int) -> bytes:
        """The exposition text, with the state gauges set from `state`."""
        self.transfers.set(transfers)
        self.event_streams.set(event_streams)
        for gauge, figures in self.state_gauges:
            gauge.clear()  # a status nobody has any more must not keep its last count
            for label, value in figures(state).items():
                gauge.labels(label).set(value)
        return generate_latest(self.registry)
