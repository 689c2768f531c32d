"""Imaging between two drives of one agent's host, run by that agent on its own files (its
`/storage/image` call, agent/storage_routes.py and storage/host_imaging.py): the API node
sends the call and follows the job; no byte of the drives crosses the network.

The agent answers with a line of progress every half second, then the job's end once DST is
durable there, or why it failed (storage/storage_calls.py `image_line`). Each line goes to the
API node's `Tracker` in a worker thread (its reports write the job's row); the tracker paces
nothing here (the agent paces the job with `max_rate`) and says when to stop: the call's
connection is then cut, and the agent stops its job when it sees it go. No line within the
agent's call timeout, or an answer cut short, is the agent gone: 503 naming the host.
"""

import functools
import json
from typing import Any

import aiohttp

from openhosting.errors import ERROR_TYPES, ApiError, FailedError
from openhosting.storage.gzip_stream import GzipStreamError
from openhosting.storage.imaging import Tracker
from openhosting.storage.remote_storage import RemoteDriveStorage
from openhosting.storage.storage_calls import ImageCall
from openhosting.storage.streamed_imaging import Offload


async def image_on_agent(
    storage: RemoteDriveStorage, call: ImageCall, tracker: Tracker, offload: Offload
) -> int:
    """Have the agent of `storage`'s host run `call`; SRC's bytes processed, once DST is
    durable there. The tracker's ImagingStopped (or any error of its reports) ends the call,
    and so the agent's job; GzipStreamError, the agent's refusals as the API's errors, 503
    (naming the host) when the agent goes."""
    agent = storage.agent
    timeout = aiohttp.ClientTimeout(
        sock_connect=agent.connect_timeout, sock_read=agent.call_timeout
    )
    response = await storage.post("image", call.encode(), timeout)
    try:
        while True:
            record = await _next_record(storage, response)
            if "error" in record:
                raise _failure(storage, record)
            try:
                if "end" in record:
                    return int(record["end"])
                done, total = int(record["done"]), int(record["total"])
            except (KeyError, TypeError, ValueError) as error:
                raise storage.unreachable(f"an answer not understood: {error!r}") from None
            await offload(functools.partial(_progress, tracker, done, total))
    finally:
        # Cut, not kept for another call: an agent whose job still runs stops it.
        response.close()


async def _next_record(
    storage: RemoteDriveStorage, response: aiohttp.ClientResponse
) -> dict[str, Any]:
    try:
        line = await response.content.readline()
        record = json.loads(line) if line else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
        raise storage.unreachable(error) from None
    if not isinstance(record, dict):
        raise storage.unreachable("the imaging job's answer ended before the job did")
    return record


def _progress(tracker: Tracker, done: int, total: int) -> None:
    """The agent's count of SRC's bytes, told to the tracker (which stops the job if told to)."""
    if total != tracker.total:
        tracker.begin(total)
    tracker.advance(max(0, done - tracker.done), paced=False)


def _failure(storage: RemoteDriveStorage, record: dict[str, Any]) -> ApiError:
    """The job's failure on the agent, as the API error a local job's would be."""
    message = str(record.get("error"))
    if record.get("gzip") is True:
        return GzipStreamError(message)  # the job's error says SRC holds no gzip image
    kind = ERROR_TYPES.get(str(record.get("kind")), FailedError)
    return kind(f"{message} (host {storage.host})")
