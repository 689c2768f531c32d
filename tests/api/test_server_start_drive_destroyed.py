"""A server's start and a destroy of one of its drives, racing (docs/api.md §5, 'Claims'):
the start checks its drives, then claims them in a transaction of its own; a destroy that
lands in between leaves the start a drive that is gone. Found by a campaign of start +
drive destroy pairs on a real daemon, where half the pairs answered the start `500 system`
(an IntegrityError: the claim's foreign key names no drive)."""

import asyncio

from aiohttp.test_utils import TestClient

from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive
from tests.api.test_servers import BASE, stopped_server


async def test_a_start_whose_drive_is_destroyed_after_its_check_is_404_and_starts_nothing(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await stopped_server(client, auth, BASE + f"ide:0:0 {drive}\n")
    # The claims of starts are made one at a time: held here, the start has checked its
    # drives and waits to claim them, which is where the destroy lands in the race.
    claiming = platform.servers._claiming
    async with claiming:
        start = asyncio.create_task(client.post(f"/servers/{server}/start", headers=auth))
        for _ in range(500):  # 5 s at most
            if claiming._waiters:
                break
            await asyncio.sleep(0.01)
        assert claiming._waiters, "the start never came to its claims"
        destroyed = await client.post(f"/drives/{drive}/destroy", headers=auth)
        assert destroyed.status == 204
    started = await start
    assert started.status == 404, await started.text()
    assert started.headers["X-Elastic-Error"] == "missing"
    assert await started.text() == f"ide:0:0: drive {drive} could not be found\n"
    info = await client.get(f"/servers/{server}/info", headers=auth)
    assert parse_properties(await info.text())["status"] == "stopped"
    with platform.engine.connect() as connection:
        assert drive_store.claim_holders(connection, [drive]) == {}
