"""`GET /events`: each user's own state changes, as server-sent events (an extension)."""

import asyncio

from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.events import QUEUE_LENGTH, EventBus, Overflowed
from openhosting.services.platform import Platform
from tests.api.drive_helpers import create_drive
from tests.api.event_stream import EventReader
from tests.conftest import basic_auth


async def open_stream(client: TestClient, auth: dict[str, str], **headers: str) -> EventReader:
    response = await client.get("/events", headers={**auth, **headers})
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    assert response.headers["X-Request-Id"]
    return EventReader(response)


async def test_a_created_drive_and_its_changes_reach_the_stream_in_order(
    client: TestClient, auth: dict[str, str]
) -> None:
    events = await open_stream(client, auth)
    drive = (await create_drive(client, auth, 1024))["drive"]
    response = await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
    assert response.status == 200
    response = await client.post(f"/drives/{drive}/destroy", headers=auth)
    assert response.status == 204
    seen = []
    for _ in range(3):
        event = await events.next()
        assert event is not None
        seen.append((event[1], event[2]["object"], event[2]["change"]))
    assert seen == [
        ("drive", drive, "created"),
        ("drive", drive, "changed"),
        ("drive", drive, "destroyed"),
    ]
    events.response.close()


async def test_a_user_sees_only_their_own_events(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    theirs = await open_stream(client, basic_auth(other_user))
    mine = await open_stream(client, auth)
    await create_drive(client, auth, 1024)
    mine_event = await mine.next()
    assert mine_event is not None and mine_event[2]["change"] == "created"
    own = (await create_drive(client, basic_auth(other_user), 2048))["drive"]
    event = await theirs.next()
    assert event is not None and event[2]["object"] == own  # not the other user's drive
    theirs.response.close()
    mine.response.close()


async def test_a_reconnecting_client_gets_what_it_missed_after_its_last_event_id(
    client: TestClient, auth: dict[str, str]
) -> None:
    events = await open_stream(client, auth)
    first = (await create_drive(client, auth, 1024))["drive"]
    got = await events.next()
    assert got is not None and got[2]["object"] == first
    events.response.close()
    second = (await create_drive(client, auth, 1024))["drive"]  # while disconnected
    resumed = await open_stream(client, auth, **{"Last-Event-ID": str(got[0])})
    missed = await resumed.next()
    assert missed is not None and missed[2]["object"] == second
    resumed.response.close()


async def test_imaging_progress_and_its_end_are_events(
    client: TestClient, auth: dict[str, str]
) -> None:
    events = await open_stream(client, auth)
    source = (await create_drive(client, auth, 1 << 20))["drive"]
    target = (await create_drive(client, auth, 1 << 20))["drive"]
    response = await client.post(f"/drives/{target}/image/{source}", headers=auth)
    assert response.status == 204
    _, done, _ = await events.until(
        lambda data: data["change"] == "imaging" and data["imaging"] in ("done", "failed"), 30
    )
    assert done["object"] == target and done["imaging"] == "done" and done["source"] == source
    events.response.close()


async def test_bad_resume_points_are_usage_errors(client: TestClient, auth: dict[str, str]) -> None:
    for bad in ("abc", "-1", "9" * 40):
        response = await client.get("/events", params={"after": bad}, headers=auth)
        assert response.status == 400 and response.headers["X-Elastic-Error"] == "usage"
    # Given twice, one of the two was taken silently: the stream began at one of them.
    response = await client.get("/events?after=1&after=2", headers=auth)
    assert response.status == 400 and response.headers["X-Elastic-Error"] == "usage"
    assert "after" in await response.text()


async def test_the_stream_needs_credentials(client: TestClient) -> None:
    response = await client.get("/events")
    assert response.status == 401 and response.headers["X-Elastic-Error"] == "auth"


async def test_streams_end_when_the_feed_closes(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    events = await open_stream(client, auth)
    await asyncio.sleep(0.05)
    platform.events.close()  # what the daemon does as it stops
    assert await events.next() is None


async def test_events_are_in_the_audit_trail(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    events = await open_stream(client, auth)
    source = (await create_drive(client, auth, 4096))["drive"]
    target = (await create_drive(client, auth, 4096))["drive"]
    await client.post(f"/drives/{target}/image/{source}", headers=auth)
    await events.until(lambda data: data.get("imaging") == "done", 30)
    trail = platform.audit.history(object_id=target)
    paths = [(entry.method, entry.path) for entry in trail]
    assert ("EVENT", f"/drives/{target}/imaging/queued") in paths
    assert ("EVENT", f"/drives/{target}/imaging/done") in paths
    assert ("POST", f"/drives/{target}/image/{source}") in paths
    events.response.close()


async def test_a_subscriber_that_falls_behind_is_dropped_not_the_platform() -> None:
    bus = EventBus()
    bus.bind()
    subscription = bus.subscribe("u")
    for n in range(QUEUE_LENGTH + 5):
        bus.publish("u", "drive", f"d{n}", "changed")
    assert bus.subscribers() == 0  # dropped, memory freed
    for _ in range(QUEUE_LENGTH - 1):
        assert await subscription.next_event(1) is not None
    try:
        await subscription.next_event(1)
    except Overflowed:
        pass
    else:
        raise AssertionError("the reader must learn it was dropped")


async def test_events_published_from_a_worker_thread_are_delivered_on_the_loop() -> None:
    bus = EventBus()
    bus.bind()
    subscription = bus.subscribe("u")
    await asyncio.to_thread(bus.publish, "u", "drive", "d", "imaging", imaging="5%")
    event = await subscription.next_event(2)
    assert event is not None and event.fields == {"imaging": "5%"}
