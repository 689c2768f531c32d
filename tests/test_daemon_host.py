"""At its start the daemon registers its host with the platform, gives it the drives from
before hosts, and heartbeats until it stops."""

import asyncio
from pathlib import Path

from sqlalchemy import insert, select

from openhosting.daemon import serve
from openhosting.services.platform import open_platform
from openhosting.store import hosts as host_store
from openhosting.store.tables import drives
from testbed.daemon_process import free_port
from tests.conftest import config_in


async def test_the_daemon_registers_its_host_and_heartbeats_until_it_stops(
    tmp_path: Path,
) -> None:
    config = config_in(
        tmp_path,
        api={"listen": f"127.0.0.1:{free_port()}"},
        hypervisor={"driver": "fake"},
        host={"name": "hv-daemon", "heartbeat_seconds": 1},
    )
    platform = open_platform(config)
    try:
        user = platform.accounts.create_user("alice").uuid
        with platform.engine.begin() as connection:  # a drive from before hosts
            connection.execute(
                insert(drives).values(
                    uuid="old", user=user, size=1, cipher="none", created_at=0.0, host=""
                )
            )
        (config.drive_path / "old.img").write_bytes(b"\0")
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(platform, ready))
        try:
            waiting = asyncio.ensure_future(ready.wait())
            await asyncio.wait([serving, waiting], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            assert ready.is_set(), serving.exception() if serving.done() else "not ready in 30 s"
            with platform.engine.connect() as connection:
                registered = host_store.get_host(connection, "hv-daemon")
                assert connection.execute(select(drives.c.host)).scalar_one() == "hv-daemon"
            assert registered is not None
            beat = registered.heartbeat_at
            for _ in range(40):  # bounded: about 4 s
                await asyncio.sleep(0.1)
                with platform.engine.connect() as connection:
                    record = host_store.get_host(connection, "hv-daemon")
                assert record is not None
                if record.heartbeat_at > beat:
                    break
            assert record.heartbeat_at > beat
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        assert not [
            task for task in asyncio.all_tasks() if "heartbeat_every" in repr(task.get_coro())
        ]
        with platform.engine.connect() as connection:
            last = host_store.get_host(connection, "hv-daemon")
        await asyncio.sleep(1.5)  # a beat's time: none comes after the stop
        with platform.engine.connect() as connection:
            assert host_store.get_host(connection, "hv-daemon") == last
    finally:
        platform.close()
