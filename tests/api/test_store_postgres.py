"""The API on a PostgreSQL store: its database work waits in worker threads, never in the
event loop, so a query held up by another node's lock stalls no other request."""

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import event, update

from openhosting.api.app import RUNNER_OPTIONS, build_app
from openhosting.api.handlers import HANDLERS
from openhosting.api.ops import build_ops_app
from openhosting.services.platform import Platform
from openhosting.store.database import open_engine
from openhosting.store.tables import drives, servers
from openhosting.wire.text import parse_properties
from tests.conftest import basic_auth, changes_heard, serve_api

# Long enough that a blocked event loop shows; the safety release ends a test of code that
# blocks (the old code) instead of hanging it.
LOCK_SAFETY_SECONDS = 6.0
# What an answer on a free event loop may take on a busy shared machine: well under the lock.
PROMPT_SECONDS = 2.0


# A read command and the table whose lock holds it up.
READS_OFF_THE_LOOP = [
    ("drives", "/drives/list"),
    ("drives", "/drives/info"),
    ("drives", "/drives/DRIVE/info"),
    ("drives", "/drives/list/standard"),
    ("servers", "/servers/list"),
    ("resources", "/resources/list"),
    ("resources", "/resources/info"),
    ("drives", "/account/info"),
]


@pytest.mark.parametrize(("table", "path"), READS_OFF_THE_LOOP)
async def test_a_read_waiting_on_a_locked_table_stalls_neither_health_nor_other_requests(  # type: ignore[no-untyped-def]
    aiohttp_client, pg_platform: Platform, postgres_url: str, table: str, path: str
) -> None:
    assert pg_platform.store.off_loop
    app = build_app(pg_platform, HANDLERS)
    server = TestServer(app)
    await server.start_server(**RUNNER_OPTIONS)
    api = await aiohttp_client(server)
    ops = await aiohttp_client(TestServer(build_ops_app(app)))
    auth = basic_auth(pg_platform.accounts.create_user("alice"))
    created = await api.post("/drives/create", data="name a\nsize 1M\n", headers=auth)
    assert created.status == 200
    drive = (await created.text()).split("drive ", 1)[1].split()[0]
    path = path.replace("DRIVE", drive)
    other = "/resources/list" if table != "resources" else "/servers/list"

    # Another node's transaction holds the table: every read of it waits.
    locker = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"))
    locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # type: ignore[arg-type]
    safety = threading.Timer(LOCK_SAFETY_SECONDS, locker.rollback)
    safety.start()
    try:
        reading = asyncio.create_task(api.get(path, headers=auth))
        await asyncio.sleep(0.5)
        assert not reading.done(), "the read did not wait for the lock"
        started = time.monotonic()
        health = await ops.get("/health")
        assert health.status == 200
        assert time.monotonic() - started < PROMPT_SECONDS
        # An authenticated request that reads other tables is served too.
        started = time.monotonic()
        assert (await api.get(other, headers=auth)).status == 200
        assert time.monotonic() - started < PROMPT_SECONDS
        assert not reading.done(), "the lock was released before the other requests ran"
    finally:
        safety.cancel()
        safety.join()
        locker.rollback()
        locker.close()
    response = await asyncio.wait_for(reading, 10)
    assert response.status == 200, await response.text()


# A create whose limit check holds the user's row (store/row_locks.py), and its body.
WRITES_OFF_THE_LOOP = [
    ("/drives/create", "name a\nsize 1M\n"),
    ("/servers/create/stopped", "name s\ncpu 500\nmem 64\n"),
    ("/resources/ip/create", ""),
    ("/resources/vlan/create", ""),
    ("/resources/ip/ADDRESS/destroy", ""),
]


@pytest.mark.parametrize(("path", "body"), WRITES_OFF_THE_LOOP)
async def test_a_write_waiting_on_another_nodes_row_lock_stalls_nothing_else(  # type: ignore[no-untyped-def]
    aiohttp_client, pg_platform: Platform, postgres_url: str, path: str, body: str
) -> None:
    app = build_app(pg_platform, HANDLERS)
    server = TestServer(app)
    await server.start_server(**RUNNER_OPTIONS)
    api = await aiohttp_client(server)
    ops = await aiohttp_client(TestServer(build_ops_app(app)))
    user = pg_platform.accounts.create_user("alice")
    auth = basic_auth(user)
    # Another node's create for the same user holds the user's row; its server start holds
    # the IP resource's row: this request waits for it.
    lock = ("SELECT uuid FROM users WHERE uuid = %s FOR UPDATE", user.uuid)
    if "ADDRESS" in path:
        created = await api.post("/resources/ip/create", data="", headers=auth)
        address = (await created.text()).split("resource ", 1)[1].split()[0]
        path = path.replace("ADDRESS", address)
        lock = ("SELECT resource FROM resources WHERE resource = %s FOR UPDATE", address)

    locker = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"))
    locker.execute(lock[0], (lock[1],))  # type: ignore[arg-type]
    safety = threading.Timer(LOCK_SAFETY_SECONDS, locker.rollback)
    safety.start()
    try:
        writing = asyncio.create_task(api.post(path, data=body, headers=auth))
        await asyncio.sleep(0.5)
        assert not writing.done(), "the write did not wait for the row"
        started = time.monotonic()
        assert (await ops.get("/health")).status == 200
        assert (await api.get("/drives/list", headers=auth)).status == 200
        assert time.monotonic() - started < PROMPT_SECONDS
        assert not writing.done(), "the lock was released before the other requests ran"
    finally:
        safety.cancel()
        safety.join()
        locker.rollback()
        locker.close()
    response = await asyncio.wait_for(writing, 10)
    assert response.status in (200, 204), await response.text()


# A read kept on PostgreSQL, and what it answers once the drive (and the server) is another
# user's.
KEPT_READS = [("/drives/list", 200), ("/drives/DRIVE/info", 404), ("/servers/info", 200)]


@pytest.mark.parametrize(("path", "status_once_given_away"), KEPT_READS)
async def test_a_kept_drive_read_is_answered_without_sql_or_a_worker_thread(  # type: ignore[no-untyped-def]
    aiohttp_client,
    pg_platform: Platform,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    status_once_given_away: int,
) -> None:
    """A drive listing or info, or the info of servers without a VM, kept since the last
    write heard of is answered on the event loop: no statement, no hand-over to the store's
    worker threads (which cost more than the whole cached answer, `make bench
    ARGS=cluster`); a write through another node is seen by the first request after its
    notification is heard."""
    api = await serve_api(aiohttp_client, pg_platform)
    listener = pg_platform.listen()
    assert listener is not None
    try:
        for _ in range(100):  # at most 10 s
            if pg_platform.changes.version() is not None:
                break
            await asyncio.sleep(0.1)
        auth = basic_auth(pg_platform.accounts.create_user("alice"))
        bob = pg_platform.accounts.create_user("bob")
        created = await api.post("/drives/create", data="name a\nsize 1M\n", headers=auth)
        drive = parse_properties(await created.text())["drive"]
        body = f"name s\ncpu 500\nmem 64\nide:0:0 {drive}"
        created = await api.post("/servers/create/stopped", data=body, headers=auth)
        server = parse_properties(await created.text())["server"]
        path = path.replace("DRIVE", drive)

        async def read() -> tuple[int, str]:
            response = await api.get(path, headers=auth)
            return response.status, await response.text()

        await changes_heard(pg_platform)
        status, text = await read()  # read and kept
        assert status == 200 and (drive in text or server in text), text

        statements: list[str] = []
        handed_over: list[str] = []
        run = pg_platform.store.run

        async def counted(work, *args, **kwargs):  # type: ignore[no-untyped-def]
            handed_over.append(getattr(work, "__name__", repr(work)))
            return await run(work, *args, **kwargs)

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        monkeypatch.setattr(pg_platform.store, "run", counted)
        event.listen(pg_platform.engine, "before_cursor_execute", record)
        try:
            for _ in range(3):
                assert await read() == (status, text)
        finally:
            event.remove(pg_platform.engine, "before_cursor_execute", record)
        assert (statements, handed_over) == ([], [])

        # Another node gives the drive to bob (its own engine, as another daemon's): once
        # its notification is heard, the next request reads the database again.
        heard = pg_platform.changes.version()
        other = open_engine(postgres_url)
        try:
            with other.begin() as connection:
                connection.execute(
                    update(drives).where(drives.c.uuid == drive).values(user=bob.uuid)
                )
                connection.execute(
                    update(servers).where(servers.c.uuid == server).values(user=bob.uuid)
                )
        finally:
            other.dispose()
        for _ in range(100):  # at most 10 s
            if pg_platform.changes.version() != heard:
                break
            await asyncio.sleep(0.1)
        status, text = await read()
        assert status == status_once_given_away and (status != 200 or text == ""), text
    finally:
        listener.stop()
