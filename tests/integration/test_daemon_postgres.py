"""A real `openhostingd` on a PostgreSQL store: the admin tool makes its user in the same
database, and a drive goes through its whole life (create, write, read, list, destroy)."""

import os

import psycopg

from tests.integration.drive_daemon import running_daemon


def test_a_daemon_on_postgresql_serves_a_drive_from_create_to_destroy(postgres_url: str) -> None:
    with running_daemon({"OH_STORE_URL": postgres_url}) as daemon:
        drive = daemon.create_drive(1 << 20, "aes-xts-plain")
        data = os.urandom(8192)
        written = daemon.request(f"/drives/{drive}/write/4096", data)
        assert written.status == 204, written
        read = daemon.request(f"/drives/{drive}/read/4096/8192", method="GET")
        assert read.status == 200 and read.body == data
        listed = daemon.request("/drives/list", method="GET")
        assert listed.status == 200 and drive in listed.body.decode()
        info = daemon.info(drive)
        assert info["write:bytes"] == "8192" and info["read:bytes"] == "8192"
        destroyed = daemon.request(f"/drives/{drive}/destroy")
        assert destroyed.status == 204, destroyed
        assert drive not in daemon.request("/drives/list", method="GET").body.decode()
        # Everything the daemon knows is in PostgreSQL: no SQLite file beside the drives.
        assert not (daemon.process.state_dir / "openhosting.sqlite").exists()
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as connection:
        user = connection.execute("SELECT uuid FROM users WHERE name = ''").fetchall()
        audit = connection.execute("SELECT path, status FROM audit ORDER BY id").fetchall()
    assert len(user) == 1  # made by openhosting-admin, beside the platform user
    assert (f"/drives/{drive}/destroy", 204) in audit
