"""The hot read commands (`drives/D/info`, `servers/info`, `servers/S/info`) answer through the
Reader (store/reader.py), not SQLAlchemy's engine, whose execute cost several times their
query (`make bench ARGS=api`); and what they answer still shows every change at once (a
claim's showing is tested in test_drive_claims.py): `drives/D/info` keeps its rows only while
nothing has been committed."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event, update

from openhosting.api import negotiation
from openhosting.config import Config
from openhosting.model.server import ServerConfig
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.services.servers import servers as servers_module
from openhosting.storage import drive_files
from openhosting.store import servers as server_store
from openhosting.store.database import open_engine
from openhosting.store.tables import drives as drives_table
from openhosting.store.tables import servers as servers_table
from openhosting.wire.payload import Payload, Value
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.api.drive_helpers import create_drive, drive_info
from tests.conftest import basic_auth, config_in


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """SQLite's, whatever `--store` says: the Reader's shortcut past the engine is SQLite's
    (on PostgreSQL it reads through the engine's pool, store/reader.py)."""
    return config_in(tmp_path)


@pytest.fixture
def engine_statements(platform: Platform) -> Iterator[list[str]]:
    """The SQL statements run through the platform's engine while the test runs."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(platform.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(platform.engine, "before_cursor_execute", record)


async def _server(client: TestClient, auth: dict[str, str], drive: str) -> str:
    body = f"name s\ncpu 500\nmem 64\nide:0:0 {drive}\nboot ide:0:0"
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())["server"]


async def test_drive_and_server_infos_run_no_statement_through_the_engine(
    client: TestClient, auth: dict[str, str], engine_statements: list[str]
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    engine_statements.clear()
    for path in (f"/drives/{drive}/info", "/servers/info", f"/servers/{server}/info"):
        response = await client.get(path, headers=auth)
        assert response.status == 200, await response.text()
    assert engine_statements == []


async def test_drive_info_shows_a_write_and_a_set_at_once(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    assert (await drive_info(client, auth, drive))["write:bytes"] == "0"
    response = await client.post(f"/drives/{drive}/write/0", data=b"x" * 4096, headers=auth)
    assert response.status == 204, await response.text()
    response = await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    info = await drive_info(client, auth, drive)
    assert (info["name"], info["write:bytes"], info["write:requests"]) == ("renamed", "4096", "1")


async def test_server_infos_show_a_set_at_once_and_only_the_callers_servers(
    client: TestClient, auth: dict[str, str], platform: Platform, other_user: NewKey
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    response = await client.get(f"/servers/{server}/info", headers=auth)
    assert parse_properties(await response.text())["name"] == "renamed"
    response = await client.get("/servers/info", headers=auth)
    assert [item["name"] for item in parse_properties_list(await response.text())] == ["renamed"]

    other = basic_auth(other_user)
    response = await client.get(f"/servers/{server}/info", headers=other)
    assert (response.status, response.headers["X-Elastic-Error"]) == (404, "missing")
    response = await client.get("/servers/info", headers=other)
    assert (response.status, await response.text()) == (200, "")


async def test_server_infos_parse_an_unchanged_stored_configuration_no_more(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    parsed: list[Mapping[str, str]] = []
    parse = ServerConfig.from_properties

    def counting(props: Mapping[str, str]) -> ServerConfig:
        parsed.append(props)
        return parse(props)

    monkeypatch.setattr(ServerConfig, "from_properties", counting)
    for path in ("/servers/info", f"/servers/{server}/info") * 3:
        response = await client.get(path, headers=auth)
        assert response.status == 200, await response.text()
    assert parsed == []  # parsed once already, when the create answered its info


async def test_drive_info_reads_its_rows_again_only_after_a_commit(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    assert (await drive_info(client, auth, drive))["name"] == "test"
    statements: list[str] = []
    platform.reader._driver().set_trace_callback(statements.append)
    try:
        for _ in range(3):
            assert (await drive_info(client, auth, drive))["status"] == "active"
        # Its file is still looked at every time: gone, the drive is inactive at once.
        path = platform.drives.tiers.of("disk").path_of(drive)
        path.rename(path.with_suffix(".away"))
        assert (await drive_info(client, auth, drive))["status"] == "inactive"
        path.with_suffix(".away").rename(path)
        # The key check and the info run no statement at all: the data version is read
        # from the WAL-index header (store/wal_index.py).
        assert statements == []
        # A change is a commit: the change's own answer and the next info show it, read
        # afresh (as the trace sees).
        response = await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
        assert parse_properties(await response.text())["name"] == "renamed"
        assert (await drive_info(client, auth, drive))["name"] == "renamed"
        assert any(statement.startswith("SELECT") for statement in statements)
    finally:
        platform.reader._driver().set_trace_callback(None)


async def test_server_list_info_reads_its_rows_again_only_after_a_commit(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    assert (await client.get("/servers/info", headers=auth)).status == 200  # read, then kept
    statements: list[str] = []
    platform.reader._driver().set_trace_callback(statements.append)
    try:
        for _ in range(3):
            response = await client.get("/servers/info", headers=auth)
            assert [item["server"] for item in parse_properties_list(await response.text())] == [
                server
            ]
        assert statements == []  # as the drive's info
        response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
        assert response.status == 200, await response.text()
        response = await client.get("/servers/info", headers=auth)
        assert [item["name"] for item in parse_properties_list(await response.text())] == [
            "renamed"
        ]
        assert any(statement.startswith("SELECT") for statement in statements)
    finally:
        platform.reader._driver().set_trace_callback(None)


async def test_stopped_servers_infos_are_made_again_only_after_a_commit(
    client: TestClient,
    auth: dict[str, str],
    user: NewKey,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`servers/info` keeps a stopped server's info with its row (made on every request
    before); a change, a commit, shows in the next one, also when the commit lands between
    the read of the rows and the making of their infos."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    made: list[str] = []
    make = servers_module.server_info

    def counting(uuid: str, *args: Any, **kwargs: Any) -> dict[str, Value]:
        made.append(uuid)
        return make(uuid, *args, **kwargs)

    monkeypatch.setattr(servers_module, "server_info", counting)
    for _ in range(3):
        response = await client.get("/servers/info", headers=auth)
        assert [item["name"] for item in parse_properties_list(await response.text())] == ["s"]
    assert made == [server]
    # A row read before a commit, its info asked after it: made from that row, never
    # answered with the info kept for the row read before.
    servers = platform.servers
    (stale,) = server_store.read_servers_of(platform.reader, user.uuid)
    response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    from_stale = servers._info_at_once(stale)  # kept now, at the version after the commit
    (fresh,) = server_store.read_servers_of(platform.reader, user.uuid)
    assert from_stale is not None and from_stale["name"] == "s"
    assert servers._info_at_once(fresh) == {**from_stale, "name": "renamed"}
    response = await client.get("/servers/info", headers=auth)
    assert [item["name"] for item in parse_properties_list(await response.text())] == ["renamed"]


async def test_drive_info_is_rendered_again_only_after_a_commit_or_a_file_change(
    client: TestClient,
    auth: dict[str, str],
    user: NewKey,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`drives/D/info` keeps its payload, rendered once, while nothing is committed and its
    file's availability is the same (rendered on every request before); a change shows at
    once, also when the commit lands between the read of the row and the making of the
    payload."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    rendered: list[bytes] = []
    render = negotiation._rendered

    def counting(payload: Payload, as_json: bool) -> bytes:
        rendered.append(body := render(payload, as_json))
        return body

    monkeypatch.setattr(negotiation, "_rendered", counting)
    for _ in range(3):
        assert (await drive_info(client, auth, drive))["status"] == "active"
    assert len(rendered) == 1
    path = platform.drives.tiers.of("disk").path_of(drive)
    path.rename(path.with_suffix(".away"))
    assert (await drive_info(client, auth, drive))["status"] == "inactive"
    path.with_suffix(".away").rename(path)
    assert (await drive_info(client, auth, drive))["status"] == "active"
    assert len(rendered) == 2  # the inactive one; the active one was kept
    drives = platform.drives
    reader = drives._reader
    read_before = reader.memo(("drives/info", drive), lambda: pytest.fail("not kept"))
    response = await client.post(f"/drives/{drive}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    # The row read before the commit, made into a payload after it (kept now)...
    memo = reader.memo

    def row_read_before(key: Any, build: Any) -> Any:
        return read_before if key == ("drives/info", drive) else memo(key, build)

    monkeypatch.setattr(reader, "memo", row_read_before)
    assert drives.info_payload(user.uuid, drive).values["name"] == "test"
    monkeypatch.setattr(reader, "memo", memo)
    # ... is not what a reader of the row after the commit gets.
    assert drives.info_payload(user.uuid, drive).values["name"] == "renamed"
    assert (await drive_info(client, auth, drive))["name"] == "renamed"


async def test_stopped_servers_infos_are_rendered_once_until_a_change(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`servers/info` of servers without a VM answers one kept payload, rendered once per
    format (on every request before), until a change."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    rendered: list[bytes] = []
    render = negotiation._rendered

    def counting(payload: Payload, as_json: bool) -> bytes:
        rendered.append(body := render(payload, as_json))
        return body

    monkeypatch.setattr(negotiation, "_rendered", counting)
    for accept in ("text/plain", "application/json") * 3:
        response = await client.get("/servers/info", headers={**auth, "Accept": accept})
        assert response.status == 200 and server in await response.text()
    assert len(rendered) == 2
    response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    rendered.clear()
    response = await client.get("/servers/info", headers=auth)
    assert [item["name"] for item in parse_properties_list(await response.text())] == ["renamed"]
    assert len(rendered) == 1


async def test_drive_info_looks_at_its_file_once_while_its_directory_hears_nothing(
    client: TestClient, auth: dict[str, str], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept `drives/D/info` opens its file no more (an open, fstat and close per request
    before, a third of its cost): its availability is kept while the directory's watch hears
    nothing (storage/drive_files.py); the file moved away shows at once, as before."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    looks: list[str] = []
    look = drive_files.file_is_available

    def counted(path: str | Path) -> bool:
        looks.append(str(path))
        return look(path)

    monkeypatch.setattr(drive_files, "file_is_available", counted)
    for _ in range(4):
        assert (await drive_info(client, auth, drive))["status"] == "active"
    assert len(looks) <= 1
    path = platform.drives.tiers.of("disk").path_of(drive)
    path.rename(path.with_suffix(".away"))
    assert (await drive_info(client, auth, drive))["status"] == "inactive"
    path.with_suffix(".away").rename(path)
    assert (await drive_info(client, auth, drive))["status"] == "active"


async def test_stopped_servers_info_asks_no_servers_status_while_nothing_changes(
    client: TestClient, auth: dict[str, str], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`servers/info` of servers without a VM is one kept answer: no server's status is
    asked of the lifecycle per request (each one's was, each time), until a change."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    asked: list[str] = []
    status = platform.servers.lifecycle.status

    def counted(uuid: str) -> str | None:
        asked.append(uuid)
        return status(uuid)

    monkeypatch.setattr(platform.servers.lifecycle, "status", counted)
    answers = set()
    for _ in range(4):
        response = await client.get("/servers/info", headers=auth)
        answers.add(await response.text())
    assert len(asked) <= 1 and len(answers) == 1
    response = await client.post(f"/servers/{server}/set", data="name renamed", headers=auth)
    assert response.status == 200, await response.text()
    response = await client.get("/servers/info", headers=auth)
    assert [item["name"] for item in parse_properties_list(await response.text())] == ["renamed"]


async def test_infos_show_a_commit_made_through_another_engine_at_once(
    client: TestClient, auth: dict[str, str], platform: Platform, config: Config, other_user: NewKey
) -> None:
    """What the infos keep goes with any commit to the database, not only this process's: a
    drive and a server given to another user by another engine (the admin tool's, say) are
    missing from the next infos."""
    drive = (await create_drive(client, auth, "1M"))["drive"]
    server = await _server(client, auth, drive)
    for _ in range(2):  # read, then answered as kept
        assert (await drive_info(client, auth, drive))["drive"] == drive
        response = await client.get("/servers/info", headers=auth)
        assert server in await response.text()
    other = open_engine(config.store_url)
    try:
        with other.begin() as connection:
            connection.execute(
                update(drives_table)
                .where(drives_table.c.uuid == drive)
                .values(user=other_user.uuid)
            )
            connection.execute(
                update(servers_table)
                .where(servers_table.c.uuid == server)
                .values(user=other_user.uuid)
            )
    finally:
        other.dispose()
    response = await client.get(f"/drives/{drive}/info", headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (404, "missing")
    response = await client.get("/servers/info", headers=auth)
    assert (response.status, await response.text()) == (200, "")
