"""The event feed (`GET /events`): how many state changes a second reach a listening client,
beside how many the API makes (goal ≈ 1: the feed keeps up with the changes), and the
latency from a change to the client (p99), beside the p99 of the command that made it.

Changes are drive renames (`drives/D/set`), made by several clients at once on a real daemon.
"""

import asyncio
import json
import os
import statistics
import time

import aiohttp

from bench.harness import report, running_daemon, work_directory

CHANGES = int(os.environ.get("OH_BENCH_EVENTS", "2000"))
CLIENTS = 8


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def _measure(url: str, auth: str) -> tuple[float, float, list[float], list[float]]:
    headers = {"Authorization": auth}
    async with aiohttp.ClientSession(headers=headers) as session:
        drives = []
        for _ in range(CLIENTS):
            async with session.post(f"{url}/drives/create", data="size 1M") as answer:
                text = await answer.text()
            drives.append(dict(line.split(" ", 1) for line in text.splitlines())["drive"])
        stream = await session.get(f"{url}/events", timeout=aiohttp.ClientTimeout(total=None))
        latencies: list[float] = []
        received = asyncio.Event()

        async def listen() -> None:
            rest = b""
            async for chunk in stream.content.iter_any():
                now = time.time()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    data = json.loads(line[6:])
                    assert "change" in data, "the stream overflowed: the client fell behind"
                    if data["change"] == "changed":
                        latencies.append(now - data["at"])
                        if len(latencies) == CHANGES:
                            received.set()
                            return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        round_trips: list[float] = []

        async def change(drive: str, count: int) -> None:
            for n in range(count):
                began = time.perf_counter()
                async with session.post(f"{url}/drives/{drive}/set", data=f"name n{n}") as answer:
                    assert answer.status == 200, await answer.text()
                round_trips.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(change(d, CHANGES // CLIENTS) for d in drives))
        made = time.perf_counter() - began
        await asyncio.wait_for(received.wait(), 60)
        delivered = time.perf_counter() - began
        listener.cancel()
        stream.close()
    return CHANGES / delivered, CHANGES / made, latencies, round_trips


def run() -> float:
    with work_directory("events") as work_dir, running_daemon(work_dir) as daemon:
        rate, made, latencies, round_trips = asyncio.run(_measure(daemon.url, daemon.auth_header))
    report("events: changes delivered to a listening client", rate,
           "changes made through the API", made, "/s", "≈ 1")  # fmt: skip
    return report("events: latency p99 from the change to the client",
                  p99(latencies) * 1000, "p99 of the command that made it",
                  p99(round_trips) * 1000, "ms", "≤ 1; and < 1000 ms")  # fmt: skip
