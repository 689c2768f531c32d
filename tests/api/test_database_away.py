"""The platform's PostgreSQL away for a while (restarted, cut off, refusing connections): the
API answers `503 failed` saying so, never the `500 system` of a fault of ours, and serves
again once the database is back. Real PostgreSQL, the daemon's application in-process."""

import psycopg

from openhosting.services.platform import Platform
from testbed.postgres import PostgresServer
from tests.conftest import basic_auth, serve_api


def _connections(server: PostgresServer, database: str, allowed: bool) -> None:
    """Let `database` take connections or not; refusing, its open ones are ended too (as a
    restart ends them)."""
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {allowed}")  # type: ignore[arg-type]
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


async def test_requests_while_the_database_is_away_are_503_failed_then_served_again(  # type: ignore[no-untyped-def]
    aiohttp_client, pg_platform: Platform, postgres_server: PostgresServer, postgres_url: str
) -> None:
    api = await serve_api(aiohttp_client, pg_platform)
    auth = basic_auth(pg_platform.accounts.create_user("alice"))
    assert (await api.post("/drives/create", data="name a\nsize 1M\n", headers=auth)).status == 200
    database = postgres_url.rsplit("/", 1)[1]
    _connections(postgres_server, database, allowed=False)
    try:
        for method, path, body in [
            ("GET", "/drives/list", None),
            ("GET", "/drives/info", None),
            ("GET", "/servers/list", None),
            ("GET", "/account/info", None),
            ("POST", "/drives/create", "name b\nsize 1M\n"),
        ]:
            answer = await api.request(method, path, data=body, headers=auth)
            assert (answer.status, answer.headers["X-Elastic-Error"]) == (503, "failed"), path
            assert "database" in await answer.text()
    finally:
        _connections(postgres_server, database, allowed=True)
    listed = await api.get("/drives/list", headers=auth)
    assert listed.status == 200
    assert len((await listed.text()).split()) == 1  # nothing half-made while it was away
