"""Reading `/events` in tests: the server-sent events of one open stream, one at a time."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientResponse


class EventReader:
    """Parses the `text/event-stream` of `response` into (id, event name, data) triples."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 5.0) -> tuple[int, str, dict[str, Any]] | None:
        """The next event (comments skipped); None when the stream ends."""
        fields: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no event within {timeout} s")
            line = await asyncio.wait_for(self.response.content.readline(), remaining)
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if not text:
                if "data" in fields:
                    return (
                        int(fields.get("id", "0")),
                        fields.get("event", ""),
                        json.loads(fields["data"]),
                    )
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(": ")
            fields[name] = value

    async def until(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> tuple[int, dict[str, Any], float]:
        """The first event whose data matches, with the time it was received."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event is None:
                raise EOFError("the stream ended")
            if match(event[2]):
                return event[0], event[2], time.time()
